"""One study through process_study: selection, models, SEG + SR, records, deliveries.

Runs in-process with the bundled demo models, a real SQLite database and the in-process
dispatcher; outputs are delivered to a recording pynetdicom SCP on loopback (the Orthanc round
trip is in tests/e2e).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import func, select, update

from node.completion import queue_quiet_studies
from node.constants import JobState, StudyState
from node.db import Database, Instance, Job, Study
from node.db.schema import Delivery, DeliveryAttempt, OutputObject, Result
from node.pipeline import STEP_NAME
from node.reports import study_report
from node.settings import Settings
from node.tasks.dispatch import InProcessDispatcher
from node.tasks.jobs import ClaimedJob
from node.tasks.process import process_study, record_study, run_study
from tests.support.dicom_tools import dciodvfy_errors
from tests.support.recording_scp import RecordingSCP
from training.dicom_export import RadiographIdentity, write_radiograph
from training.phantoms import generate_phantom

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SIZE = 256


@pytest.fixture
def scp() -> Iterator[RecordingSCP]:
    recorder = RecordingSCP(ae_title="ARCHIVE")
    yield recorder
    recorder.stop()


@pytest.fixture
def node(tmp_path: Path, scp: RecordingSCP) -> Iterator[tuple[Settings, Database, InProcessDispatcher]]:
    settings = Settings(
        data_dir=tmp_path / "var",
        stable_seconds=0,
        mask_policy="loose,original",
        destinations=scp.node,
        device="cpu",
        delivery_backoff_seconds=0.2,
    )
    database = Database(settings.resolved_database_url)
    database.ensure_schema()
    dispatcher = InProcessDispatcher(settings, database)
    yield settings, database, dispatcher
    dispatcher.shutdown()
    database.engine.dispose()


def spool(settings: Settings, database: Database, study_uid: str, image: np.ndarray, spacing, **kwargs) -> str:  # type: ignore[no-untyped-def]
    """Write a radiograph into the spool and record it (as the listener does); return its SOP Instance UID."""
    identity = RadiographIdentity.new(study_uid)
    relative = f"{study_uid}/{identity.series_instance_uid}/{identity.sop_instance_uid}.dcm"
    path = write_radiograph(settings.spool_dir / relative, image, identity, pixel_spacing_mm=spacing, **kwargs)
    with database.session() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if study is None:
            study = Study(study_instance_uid=study_uid, state=StudyState.RECEIVED.value, calling_aet="MODALITY", called_aet="CXRNODE")
            session.add(study)
            session.flush()
        session.add(
            Instance(
                study_id=study.id,
                sop_instance_uid=identity.sop_instance_uid,
                sop_class_uid=str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID),
                series_instance_uid=identity.series_instance_uid,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=relative,
                size_bytes=path.stat().st_size,
                calling_aet="MODALITY",
            )
        )
    return identity.sop_instance_uid


def counts(database: Database) -> tuple[int, int, int, int]:
    with database.session() as session:
        return tuple(  # type: ignore[return-value]
            session.scalar(select(func.count()).select_from(table)) for table in (Result, OutputObject, Delivery, DeliveryAttempt)
        )


def wait_delivered(database: Database, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with database.session() as session:
            states = set(session.scalars(select(Delivery.state)))
        if states and states <= {"delivered"}:
            return
        time.sleep(0.05)
    raise AssertionError(f"deliveries not delivered within {timeout} s: {states}")


@pytest.mark.slow
def test_a_study_is_analysed_written_recorded_and_delivered(node, scp: RecordingSCP) -> None:  # type: ignore[no-untyped-def]
    settings, database, dispatcher = node
    study_uid = RadiographIdentity.new().study_instance_uid
    phantom = generate_phantom(SIZE, seed=808, findings=["Mass"])
    pa = spool(settings, database, study_uid, phantom.image, phantom.pixel_spacing_mm)
    lateral = spool(settings, database, study_uid, phantom.image, phantom.pixel_spacing_mm, view_position="LL")
    hand = spool(settings, database, study_uid, phantom.image, phantom.pixel_spacing_mm, body_part="HAND")
    ct = spool(settings, database, study_uid, phantom.image, phantom.pixel_spacing_mm, modality="CT")
    (queued,) = queue_quiet_studies(database, settings)

    summary = process_study(queued.job_id, context=dispatcher.context)
    assert dispatcher.wait_idle(60)
    wait_delivered(database)

    step = summary["steps"][STEP_NAME]
    assert step["policies"] == ["loose", "original"] and step["ok"] == [pa]
    assert "view position LL" in step["skipped"][lateral]
    assert "body part HAND" in step["skipped"][hand]
    assert "modality CT" in step["skipped"][ct]
    with database.session() as session:
        results = {(r.instance.sop_instance_uid, r.policy): r for r in session.scalars(select(Result))}
        assert len(results) == 4 * 2  # every image under every policy
        for policy in ("loose", "original"):
            ok = results[(pa, policy)]
            assert ok.status == "ok" and ok.reason is None
            assert set(ok.probabilities) == {"Mass", "Nodule", "Pneumonia", "Edema", "Fibrosis"}
            assert ok.decisions == {k: ok.probabilities[k] >= ok.thresholds[k] for k in ok.probabilities}
            assert 0 <= ok.no_finding <= 1
            assert ok.model_versions["segmenter"]["device_uid"] and ok.model_versions["classifier"]["policy"] == policy
            assert ok.model_versions["classifier"]["clinical_use"] is False
            assert {"decode", "model_input", "image_encoder", "mask_decoder", "classifier", "build_sr", "record"} <= set(ok.timings)
            assert results[(lateral, policy)].status == "skipped"
        outputs = list(session.scalars(select(OutputObject).order_by(OutputObject.id)))
        assert [o.kind for o in outputs] == ["SEG", "SR", "SR"]
        for output in outputs:
            path = settings.output_dir / output.path
            ds = pydicom.dcmread(path)
            assert (ds.SOPInstanceUID, ds.StudyInstanceUID, path.stat().st_size) == (
                output.sop_instance_uid,
                study_uid,
                output.size_bytes,
            )
        assert session.scalar(select(Study.state)) == StudyState.DELIVERED.value
        assert session.scalar(select(Job.state)) == "done"
    # Only what is sent was proposed: the SEG's and the SR's own (class, syntax) pairs.
    assert sorted(scp.received) == sorted(o.sop_instance_uid for o in outputs)
    assert sorted(scp.proposed[-1]) == sorted({(o.sop_class_uid, (o.transfer_syntax_uid,)) for o in outputs})
    assert {o.sop_class_uid for o in outputs} == {SEG_SOP_CLASS, SR_SOP_CLASS}

    with database.session() as session:
        report = study_report(session, study_uid)
    assert {r["status"] for r in report["results"]} == {"ok", "skipped"}
    assert [o["deliveries"][0]["state"] for o in report["outputs"]] == ["delivered"] * 3
    assert report["delivery"]["by_state"] == {"delivered": 3}


@pytest.mark.slow
def test_a_retried_job_reuses_the_same_uids_and_adds_no_rows(node, scp: RecordingSCP) -> None:  # type: ignore[no-untyped-def]
    settings, database, dispatcher = node
    study_uid = RadiographIdentity.new().study_instance_uid
    phantom = generate_phantom(SIZE, seed=909)
    spool(settings, database, study_uid, phantom.image, phantom.pixel_spacing_mm)
    (queued,) = queue_quiet_studies(database, settings)
    process_study(queued.job_id, context=dispatcher.context)
    assert dispatcher.wait_idle(60)
    wait_delivered(database)
    before = counts(database)
    with database.session() as session:
        first = {(o.sop_instance_uid, o.sha256 != "") for o in session.scalars(select(OutputObject))}
        study = session.scalar(select(Study))
        claim = ClaimedJob(queued.job_id, study.id, study_uid, 0, 1, "test", study.calling_aet, study.called_aet)

    # The same job run again (a worker died after the step, the job was claimed again).
    with database.session() as session:  # the claim as a second attempt would hold it
        session.execute(update(Job).where(Job.id == queued.job_id).values(state=JobState.RUNNING))
    summary, records = run_study(claim, dispatcher.context)
    again = record_study(claim, summary, records, dispatcher.context)
    assert dispatcher.wait_idle(60)

    assert again == []  # already delivered: nothing to send again
    assert counts(database) == before
    with database.session() as session:
        assert {(o.sop_instance_uid, o.sha256 != "") for o in session.scalars(select(OutputObject))} == first
    assert len(scp.received) == 3  # SEG + two SRs, once each


def untrained_model_store(root: Path) -> Path:
    """A real model store whose segmenter has random weights (seeded): its masks never pass the
    plausibility check, so every image takes the failed-segmentation path."""
    import torch

    from models.classifier.network import ChestClassifier, ClassifierConfig
    from models.labels import FINDINGS
    from models.segmenter.registry import build_segmenter, get_architecture
    from models.store import ModelStore, write_version

    torch.manual_seed(0)
    size = get_architecture("sam_tiny").image_size
    common = {"intended_use": "Test model with random weights.", "training_data_description": "none", "training_data_fingerprint": "0" * 64}
    write_version(
        root, role="segmenter", name="untrained_sam_tiny", version="1", architecture="sam_tiny",
        weights=build_segmenter("sam_tiny").state_dict(), input_size=(size, size), channels=3,
        normalisation="minmax", labels=("left", "right"), **common,
    )
    store = ModelStore(root, fallback=None)
    store.promote("segmenter", "untrained_sam_tiny:1")
    for policy in ("original", "loose"):
        thresholds = {label: 0.5 for label in FINDINGS}
        config = ClassifierConfig(architecture="cxr_tiny", input_size=64, mean=0.5, std=0.25, labels=list(FINDINGS), policy=policy, thresholds=thresholds)
        write_version(
            root, role="classifier", name=f"untrained_{policy}", version="1", architecture="cxr_tiny",
            parameters={"mean": 0.5, "std": 0.25}, weights=ChestClassifier.build(config, device="cpu").net.state_dict(),
            input_size=(64, 64), channels=1, normalisation="meanstd", labels=FINDINGS, policy=policy,
            thresholds=thresholds, **common,
        )
        store.promote("classifier", f"untrained_{policy}:1", policy=policy)
    return root


@pytest.mark.slow
def test_a_failed_segmentation_fails_masked_policies_and_keeps_the_unmasked_one(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "var", stable_seconds=0, mask_policy="loose,original", device="cpu",
        model_dir=untrained_model_store(tmp_path / "models"),
    )
    database = Database(settings.resolved_database_url)
    database.ensure_schema()
    dispatcher = InProcessDispatcher(settings, database)
    try:
        study_uid = RadiographIdentity.new().study_instance_uid
        phantom = generate_phantom(SIZE, seed=606)
        spool(settings, database, study_uid, phantom.image, phantom.pixel_spacing_mm)
        (queued,) = queue_quiet_studies(database, settings)
        process_study(queued.job_id, context=dispatcher.context)
        with database.session() as session:
            results = {r.policy: r for r in session.scalars(select(Result))}
            outputs = list(session.scalars(select(OutputObject)))
            job_state = session.scalar(select(Job.state))
    finally:
        dispatcher.shutdown()
        database.engine.dispose()
    assert job_state == "done"
    assert results["loose"].status == "failed"
    assert results["loose"].reason.startswith("lung segmentation failed")
    assert results["loose"].probabilities is None and results["loose"].model_versions["segmenter"]["name"] == "untrained_sam_tiny"
    assert results["original"].status == "ok" and "no SEG" in results["original"].reason
    assert set(results["original"].probabilities) == {"Mass", "Nodule", "Pneumonia", "Edema", "Fibrosis"}
    assert [o.kind for o in outputs] == ["SR"]  # no SEG without lungs; the unmasked policy still reports
    assert dciodvfy_errors(settings.output_dir / outputs[0].path) == []
