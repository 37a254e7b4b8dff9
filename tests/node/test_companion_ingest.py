"""The node's own SEG and SR coming back (a PACS forwarding a whole study) never re-open a study.

Real listener on loopback, real storescu, real SQLite; the worker runs in-process.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import func, select

from node.completion import as_utc, queue_quiet_studies
from node.constants import COMPREHENSIVE_3D_SR, SEGMENTATION, StudyState
from node.db import Job, Study
from node.db.schema import OutputObject, Result
from node.ingest import IngestOutcome, ReceivedInstance, record_instance
from node.pipeline import STEP_NAME
from node.scp import statuses
from node.tasks.dispatch import InProcessDispatcher
from node.tasks.process import process_study
from tests.support.companion_objects import write_node_outputs
from tests.support.dcmtk import storescu
from tests.support.listener import Node, start_node
from tests.support.study_rows import add_study, make_database, make_settings


def _send_back(node: Node, folder: Path, study_uid: str | None = None) -> list[str]:
    """storescu the node's SEG (JPEG 2000) and SR of ``study_uid`` to ``node``; return their SOP Instance UIDs."""
    import pydicom

    files = write_node_outputs(folder, study_uid)
    for path, extra in ((files.seg, ["-xv"]), (files.sr, [])):
        run = storescu(node.port, [path], calling_aet="PACS", extra=extra)
        assert run.returncode == 0, run.output[-2000:]
        assert run.statuses == [statuses.SUCCESS]
    return [str(pydicom.dcmread(p).SOPInstanceUID) for p in files.paths]


def _count(node: Node, table: type) -> int:
    with node.database.session() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


@pytest.fixture
def node(tmp_path: Path):  # type: ignore[no-untyped-def]
    started = start_node(tmp_path / "var", stable_seconds=0.0, device="cpu")
    yield started
    started.stop()


def test_a_done_study_receiving_its_own_seg_and_sr_stays_done_and_gets_no_job(node: Node, tmp_path: Path) -> None:
    study_id, study_uid = add_study(node.database, state=StudyState.DONE, generation=1, quiet_for=600)
    with node.database.session() as session:
        before = session.get(Study, study_id)
        assert before is not None
        last_received = before.last_received_at

    sent = _send_back(node, tmp_path / "outputs", study_uid)

    assert sorted(row.sop_instance_uid for row in node.instances()) == sorted(sent)
    assert all(row.study_id == study_id for row in node.instances())
    assert [s.outcome for s in node.stored] == [IngestOutcome.ADDED, IngestOutcome.ADDED]
    after = node.study(study_uid)
    assert after is not None
    assert (after.state, after.generation) == (StudyState.DONE.value, 1)
    assert as_utc(after.last_received_at) == as_utc(last_received)
    assert queue_quiet_studies(node.database, node.settings) == []
    assert _count(node, Job) == 0


@pytest.mark.parametrize("state", [StudyState.QUEUED, StudyState.RUNNING, StudyState.DELIVERED, StudyState.FAILED])
def test_a_companion_instance_leaves_state_generation_and_quiet_period_alone(tmp_path: Path, state: StudyState) -> None:
    settings = make_settings(tmp_path)
    database = make_database(settings)
    try:
        study_id, study_uid = add_study(database, state=state, generation=2, quiet_for=600)
        received_id, received_uid = add_study(database, state=StudyState.RECEIVED, quiet_for=600)
        with database.session() as session:
            quiet_since = session.get(Study, received_id).last_received_at  # type: ignore[union-attr]
        for uid, sop_class in ((study_uid, SEGMENTATION), (received_uid, COMPREHENSIVE_3D_SR)):
            item = ReceivedInstance(uid, f"{uid}.1", f"{uid}.2", sop_class, "1.2.840.10008.1.2.1", "x.dcm", 10, "PACS", "CXRNODE")
            assert record_instance(database, item).outcome is IngestOutcome.ADDED
        with database.session() as session:
            kept = session.get(Study, study_id)
            received = session.get(Study, received_id)
            assert kept is not None and received is not None
            assert (kept.state, kept.generation) == (state.value, 2)
            assert (received.state, as_utc(received.last_received_at)) == (StudyState.RECEIVED.value, as_utc(quiet_since))
        # An image still re-opens the study, as before.
        image = ReceivedInstance(study_uid, f"{study_uid}.3", f"{study_uid}.4", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1", "y.dcm", 10, "PACS", "CXRNODE")
        assert record_instance(database, image).outcome is IngestOutcome.REOPENED
    finally:
        database.engine.dispose()


def test_a_study_of_only_seg_and_sr_is_processed_once_with_both_skipped(node: Node, tmp_path: Path) -> None:
    seg_uid, sr_uid = _send_back(node, tmp_path / "outputs")
    (queued,) = queue_quiet_studies(node.database, node.settings, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1))

    dispatcher = InProcessDispatcher(node.settings, node.database)
    try:
        summary = process_study(queued.job_id, context=dispatcher.context)
        assert dispatcher.wait_idle(30)
    finally:
        dispatcher.shutdown()

    assert summary is not None
    step = summary["steps"][STEP_NAME]
    assert step["ok"] == [] and step["failed"] == {}
    assert set(step["skipped"]) == {seg_uid, sr_uid}
    assert all(reason.startswith("output of cxr-node") for reason in step["skipped"].values()), step["skipped"]
    assert summary["not_decoded"] == sorted([seg_uid, sr_uid])  # never decoded: companions
    with node.database.session() as session:
        assert session.scalar(select(Job.state)) == "done"
        assert {r.status for r in session.scalars(select(Result))} == {"skipped"}
    assert _count(node, OutputObject) == 0
    assert queue_quiet_studies(node.database, node.settings) == []
