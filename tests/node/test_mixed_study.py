"""Studies with one bad instance: it fails alone, with a reason that quotes nothing from its header.

Real process_study runs with the bundled demo models, a real SQLite database and real files in
the spool whose headers are broken the way modalities break them (an unknown VR, an impossible
birth date, an unknown character set). What is the image's fault fails that image; what is not
(the models, the disk) still fails the job so that it is retried.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from node.cli import app
from node.completion import queue_quiet_studies
from node.constants import JobState
from node.db import Database, Instance, Job
from node.db.schema import OutputObject, Result
from node.outputs.builders import BuildInput, OutputBuilder
from node.pipeline import STEP_NAME
from node.settings import Settings
from node.tasks.dispatch import InProcessDispatcher
from node.tasks.process import process_study
from tests.node.test_pipeline import spool
from tests.support.broken_headers import BAD_BIRTH_DATE, UNKNOWN_VR_BODY_PART, break_header, leaked
from tests.support.dicom_tools import dciodvfy_errors
from tests.support.study_rows import add_instance, add_study
from training.dicom_export import RadiographIdentity
from training.phantoms import generate_phantom

runner = CliRunner()


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, Database, InProcessDispatcher]]:
    for name in ("CXR_NODE_DATABASE_URL", "CXR_NODE_BROKER_URL", "CXR_NODE_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CXR_NODE_DATA_DIR", str(tmp_path / "var"))  # for `cxr-node studies show`
    settings = Settings(data_dir=tmp_path / "var", stable_seconds=0, mask_policy="loose", device="cpu")
    database = Database(settings.resolved_database_url)
    database.ensure_schema()
    dispatcher = InProcessDispatcher(settings, database)
    yield settings, database, dispatcher
    dispatcher.shutdown()
    database.engine.dispose()


def spool_path(settings: Settings, database: Database, sop_instance_uid: str) -> Path:
    with database.session() as session:
        return settings.spool_dir / session.scalar(select(Instance.path).where(Instance.sop_instance_uid == sop_instance_uid))


def results_by_uid(database: Database) -> dict[str, Result]:
    with database.session() as session:
        rows = list(session.scalars(select(Result)))
        found = {r.instance.sop_instance_uid: r for r in rows}
        for row in rows:
            row.kinds = sorted(o.kind for o in session.scalars(select(OutputObject).where(OutputObject.result_id == row.id)))
            row.paths = list(session.scalars(select(OutputObject.path).where(OutputObject.result_id == row.id)))
        session.expunge_all()
    return found


def everything_recorded(database: Database) -> str:
    """Every row of every table, as SQL text."""
    connection = database.engine.raw_connection()
    try:
        return "\n".join(connection.driver_connection.iterdump())  # type: ignore[union-attr]
    finally:
        connection.close()


def test_an_unknown_vr_fails_that_instance_alone_and_the_valid_pa_gets_its_seg_and_sr(node) -> None:  # type: ignore[no-untyped-def]
    settings, database, dispatcher = node
    study_uid = RadiographIdentity.new().study_instance_uid
    phantom = generate_phantom(256, seed=808, findings=["Mass"])
    good = spool(settings, database, study_uid, phantom.image, phantom.pixel_spacing_mm)
    bad = spool(settings, database, study_uid, phantom.image, phantom.pixel_spacing_mm)
    break_header(spool_path(settings, database, bad), dict([UNKNOWN_VR_BODY_PART]))
    (queued,) = queue_quiet_studies(database, settings)

    summary = process_study(queued.job_id, context=dispatcher.context)

    with database.session() as session:
        assert session.get(Job, queued.job_id).state == JobState.DONE.value
    results = results_by_uid(database)
    assert results[good].status == "ok" and results[good].kinds == ["SEG", "SR"]
    for path in results[good].paths:
        assert dciodvfy_errors(settings.output_dir / path) == []
    assert results[bad].status == "failed" and results[bad].kinds == []
    assert results[bad].reason == "header not readable: Body Part Examined (0018,0015) has an unknown value representation"
    identity = RadiographIdentity.new()
    for value in ("CHEST", "ZZ", identity.patient_id, identity.patient_name, identity.accession_number):
        assert value not in results[bad].reason
    assert summary["steps"][STEP_NAME]["ok"] == [good]


def test_invalid_birth_date_and_unknown_charset_build_outputs_and_reach_no_record_or_log(node, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    settings, database, dispatcher = node
    study_uid = RadiographIdentity.new().study_instance_uid
    phantom = generate_phantom(256, seed=808, findings=["Mass"])
    uid = spool(settings, database, study_uid, phantom.image, phantom.pixel_spacing_mm)
    path = spool_path(settings, database, uid)
    break_header(path, PatientBirthDate=BAD_BIRTH_DATE, SpecificCharacterSet="ISO_IR 100")
    break_header(path, {b"ISO_IR 100": b"ISO_IR 999"})
    (queued,) = queue_quiet_studies(database, settings)
    caplog.clear()  # what writing the broken file logged is the test's, not the node's
    caplog.set_level(logging.DEBUG)

    summary = process_study(queued.job_id, context=dispatcher.context)

    result = results_by_uid(database)[uid]
    assert result.status == "ok" and result.kinds == ["SEG", "SR"]
    assert result.reason == (
        "left out of the outputs: Specific Character Set (0008,0005): not a supported character set "
        "(its texts are ASCII: written in the default repertoire); "
        "left out of the outputs: Patient's Birth Date (0010,0030): not a valid DA"
    )
    assert summary["steps"][STEP_NAME]["warnings"] == {uid: result.reason.split("; ")}
    for output in result.paths:
        assert dciodvfy_errors(settings.output_dir / output) == []
        assert pydicom.dcmread(settings.output_dir / output).PatientBirthDate == ""
    shown = runner.invoke(app, ["studies", "show", study_uid])
    shown_json = runner.invoke(app, ["studies", "show", study_uid, "--json"])
    assert shown.exit_code == 0 and shown_json.exit_code == 0, shown.output
    assert "not a valid DA" in shown_json.stdout
    assert leaked(everything_recorded(database)) == []
    assert leaked(shown.stdout) == [] and leaked(shown_json.stdout) == []
    assert leaked(caplog.text) == [], caplog.text


class _RaisingBuilder(OutputBuilder):
    kind, sop_class_uid, transfer_syntaxes, per_policy = "BAD", "1.2.3", ("1.2.840.10008.1.2.1",), False

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def build(self, given: BuildInput):  # type: ignore[no-untyped-def]
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        KeyError(BAD_BIRTH_DATE),
        AttributeError(BAD_BIRTH_DATE),
        NotImplementedError(f"Unknown Value Representation {BAD_BIRTH_DATE!r} in tag (0010,0030)"),
        TypeError(BAD_BIRTH_DATE),
        UnicodeDecodeError("utf-8", BAD_BIRTH_DATE.encode(), 0, 1, "invalid start byte"),
        struct.error(BAD_BIRTH_DATE),
    ],
    ids=lambda e: type(e).__name__,
)
def test_any_library_error_while_building_fails_the_image_not_the_job(node, error: BaseException) -> None:  # type: ignore[no-untyped-def]
    settings, database, dispatcher = node
    study_id, study_uid = add_study(database, quiet_for=60)
    add_instance(database, settings, study_id, study_uid)
    dispatcher.context.builders = (_RaisingBuilder(error),)
    (queued,) = queue_quiet_studies(database, settings)

    process_study(queued.job_id, context=dispatcher.context)

    with database.session() as session:
        assert session.get(Job, queued.job_id).state == JobState.DONE.value
        (result,) = session.scalars(select(Result))
        assert result.status == "failed" and result.reason.startswith("BAD could not be built: ")
        assert leaked(result.reason) == [], result.reason


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), MemoryError()], ids=lambda e: type(e).__name__)
def test_the_disk_and_memory_are_never_the_images_fault(node, error: BaseException) -> None:  # type: ignore[no-untyped-def]
    settings, database, dispatcher = node
    study_id, study_uid = add_study(database, quiet_for=60)
    add_instance(database, settings, study_id, study_uid)
    dispatcher.context.builders = (_RaisingBuilder(error),)
    (queued,) = queue_quiet_studies(database, settings)

    outcome = process_study(queued.job_id, context=dispatcher.context)

    assert outcome is not None and outcome["state"] == "failed"
    with database.session() as session:
        job = session.get(Job, queued.job_id)
        assert job.state == JobState.FAILED.value and job.error.startswith("stage 'analysis' failed: ")
        assert list(session.scalars(select(Result))) == []


def test_an_output_directory_that_cannot_be_written_fails_the_job(node) -> None:  # type: ignore[no-untyped-def]
    settings, database, dispatcher = node
    study_uid = RadiographIdentity.new().study_instance_uid
    phantom = generate_phantom(256, seed=808, findings=["Mass"])
    spool(settings, database, study_uid, phantom.image, phantom.pixel_spacing_mm)
    settings.output_dir.parent.mkdir(parents=True, exist_ok=True)
    settings.output_dir.write_bytes(b"")  # a file where the directory should be: every write fails
    (queued,) = queue_quiet_studies(database, settings)

    outcome = process_study(queued.job_id, context=dispatcher.context)

    assert outcome is not None and outcome["state"] == "failed"
    with database.session() as session:
        job = session.get(Job, queued.job_id)
        assert job.state == JobState.FAILED.value and job.error.startswith("stage 'analysis' failed: ")
        assert list(session.scalars(select(Result))) == []


def test_models_that_cannot_be_loaded_fail_the_job_not_the_image(node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, database, _ = node
    unloadable = settings.model_copy(update={"device": "cuda:999"})  # no such device, here or on a GPU host
    dispatcher = InProcessDispatcher(unloadable, database)
    try:
        study_id, study_uid = add_study(database, quiet_for=60)
        add_instance(database, unloadable, study_id, study_uid)
        (queued,) = queue_quiet_studies(database, unloadable)

        outcome = process_study(queued.job_id, context=dispatcher.context)
    finally:
        dispatcher.shutdown()

    assert outcome is not None and outcome["state"] == "failed"
    with database.session() as session:
        assert session.get(Job, queued.job_id).state == JobState.FAILED.value
        assert list(session.scalars(select(Result))) == []
