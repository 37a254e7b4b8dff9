"""The database's disk reserve on a real, tiny file system: a full disk still records failures.

Each test mounts a tmpfs (root only; skipped otherwise) holding the node's data directory and
fills it with a filler file, as another program on the same disk would.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from node.completion import reprocess_study
from node.constants import JobState, StudyState
from node.db import Database, Job, Study
from node.disk import DiskReserve, free_bytes, is_disk_full_error
from node.outputs.builders import DEFAULT_BUILDERS, BuildInput, LungSegmentationBuilder
from node.outputs.files import OutputDiskFullError, write_output
from node.service import NodeService
from node.settings import Settings
from tests.support.dcmtk import storescu
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.tmpfs import MIB, fill_until, mounted_tmpfs
from training.dicom_export import RadiographIdentity, write_radiograph
from training.phantoms import generate_phantom


# --- pure logic ------------------------------------------------------------------------------
def test_disk_full_is_recognised_through_sqlalchemy_and_chains() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    wrapped = OperationalError("INSERT ...", {}, full)
    assert is_disk_full_error(wrapped)
    assert is_disk_full_error(OSError(28, "No space left on device"))
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as cause:
            raise RuntimeError("stage failed") from cause
    except RuntimeError as chained:
        assert is_disk_full_error(chained)
    assert not is_disk_full_error(OperationalError("SELECT", {}, sqlite3.OperationalError("database is locked")))
    assert not is_disk_full_error(OSError(5, "Input/output error"))


def test_a_reserve_needs_a_size() -> None:
    with pytest.raises(ValueError, match="above 0"):
        DiskReserve(Path("/nonexistent/.reserve"), 0)


def test_only_a_sqlite_file_database_keeps_a_reserve(tmp_path: Path) -> None:
    assert Database("sqlite:///:memory:").keep_disk_reserve(MIB) is None
    database = Database(f"sqlite:///{tmp_path / 'node.sqlite3'}")
    assert database.keep_disk_reserve(0) is None
    reserve = database.keep_disk_reserve(MIB)
    assert reserve is not None and reserve.path == tmp_path / "node.sqlite3.reserve"
    assert reserve.path.stat().st_size == MIB and reserve.path.stat().st_blocks * 512 >= MIB  # allocated, not sparse
    assert oct(reserve.path.stat().st_mode & 0o777) == oct(0o600)
    database.engine.dispose()


# --- on a real full disk -----------------------------------------------------------------------
def test_reserve_is_released_on_a_full_disk_and_restored_when_space_is_back(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", 8 * MIB) as disk:
        reserve = DiskReserve(disk / "db.reserve", MIB)
        reserve.check()
        assert reserve.held
        before = free_bytes(disk)
        filler = fill_until(disk / "filler", free_left=0)
        reserve.check()  # what every database session does first
        assert not reserve.path.exists() and free_bytes(disk) == MIB
        reserve.check()  # 1 MiB free is under the 3 MiB needed to restore: no loop
        assert not reserve.path.exists()
        filler.unlink()
        reserve.check()
        assert reserve.held and free_bytes(disk) == before


def test_a_transaction_failing_for_lack_of_space_releases_the_reserve_for_the_next_one(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", 16 * MIB) as disk:
        database = Database(f"sqlite:///{disk / 'node.sqlite3'}")
        try:
            with database.session() as session:
                session.execute(text("CREATE TABLE blobs (data BLOB)"))
            reserve = database.keep_disk_reserve(2 * MIB)
            assert reserve is not None and reserve.held
            fill_until(disk / "filler", free_left=2 * MIB + 512 * 1024)  # above the release point
            blob = b"\x01" * (3 * MIB)  # more than is free, less than free plus the reserve
            with pytest.raises(OperationalError, match="database or disk is full"):
                with database.session() as session:
                    session.execute(text("INSERT INTO blobs VALUES (:data)"), {"data": blob})
            assert not reserve.path.exists()
            with database.session() as session:  # the failure can now be recorded
                session.execute(text("INSERT INTO blobs VALUES (:data)"), {"data": blob})
            with database.session() as session:
                assert session.scalar(text("SELECT count(*) FROM blobs")) == 1
        finally:
            database.engine.dispose()


def test_an_output_is_not_written_under_the_watermark_nor_half_written_on_a_full_disk(tmp_path: Path) -> None:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3", "1.2.3.4", "1.2.3.4.5"
    ds.SOPClassUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.7", "OT"
    ds.PixelData, ds.Rows, ds.Columns = b"\0" * (256 * 1024), 512, 512
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel = 8, 8, 7, 1
    ds.PixelRepresentation, ds.PhotometricInterpretation = 0, "MONOCHROME2"
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    with mounted_tmpfs(tmp_path / "disk", 8 * MIB) as disk:
        outputs = disk / "outputs"
        fill_until(disk / "filler", free_left=2 * MIB)
        with pytest.raises(OutputDiskFullError, match="under the watermark of 2097152 bytes"):
            write_output(outputs, ds, min_free_bytes=2 * MIB)
        assert not outputs.exists() or not any(p.is_file() for p in outputs.rglob("*"))
        fill_until(disk / "filler", free_left=0)
        with pytest.raises(OutputDiskFullError, match="the disk is full") as raised:
            write_output(outputs, ds)
        assert raised.value.errno == 28
        assert not any(p.is_file() for p in outputs.rglob("*"))  # no temporary file left behind
        (disk / "filler").unlink()
        path = write_output(outputs, ds, min_free_bytes=2 * MIB)
        assert path.stat().st_size > 256 * 1024


class DiskFillingSegBuilder(LungSegmentationBuilder):
    """The real SEG builder, which then fills the disk to the last byte (another program, while the job runs)."""

    def __init__(self, filler: Path) -> None:
        self.filler = filler

    def build(self, given: BuildInput) -> Dataset:
        ds = super().build(given)
        fill_until(self.filler, free_left=0)
        return ds


@pytest.mark.slow
def test_a_job_whose_disk_fills_up_is_recorded_failed_thanks_to_the_reserve(tmp_path: Path) -> None:
    phantom = generate_phantom(256, seed=5)  # a radiograph the demo models segment: a SEG is built
    sent = write_radiograph(
        tmp_path / "in.dcm", phantom.image, RadiographIdentity.new(), pixel_spacing_mm=phantom.pixel_spacing_mm
    )
    with mounted_tmpfs(tmp_path / "disk", 24 * MIB) as disk:
        settings = Settings(
            data_dir=disk,
            host="127.0.0.1",
            port=free_port(),
            min_free_disk_bytes=MIB,
            database_reserve_bytes=2 * MIB,
            stable_seconds=0.2,
            scan_interval_seconds=0.1,
            device="cpu",
        )
        service = NodeService(settings)
        service.start()
        try:
            reserve = service.database.disk_reserve
            assert reserve is not None and reserve.held
            assert service.dispatcher is not None
            service.dispatcher.context.builders = (DiskFillingSegBuilder(disk / "filler"), *DEFAULT_BUILDERS[1:])
            assert storescu(service.listener.port, [sent]).statuses == [0x0000]

            def job_state() -> str | None:
                with service.database.session() as session:
                    state = session.scalar(select(Job.state))
                return None if state in (None, JobState.QUEUED, JobState.RUNNING) else state

            assert wait_for(job_state, "the job's outcome recorded", timeout=90) is JobState.FAILED
            with service.database.session() as session:
                job = session.scalars(select(Job)).one()
                study = session.scalars(select(Study)).one()
            assert "stage 'analysis' failed: OutputDiskFullError" in (job.error or "")
            assert study.state is StudyState.FAILED
            assert not reserve.path.exists()  # its space went to recording the failure
            assert not [p for p in settings.output_dir.rglob("*") if p.is_file()]  # no partial output

            (disk / "filler").unlink()
            with service.database.session():
                pass  # any later transaction restores the reserve
            assert reserve.held

            # Not the study's fault: once space is freed, processing it again succeeds.
            service.dispatcher.context.builders = DEFAULT_BUILDERS
            reprocess_study(service.database, study.study_instance_uid)

            def new_job_state() -> str | None:
                with service.database.session() as session:
                    state = session.scalar(select(Job.state).order_by(Job.id.desc()).limit(1).where(Job.id != job.id))
                return None if state in (None, JobState.QUEUED, JobState.RUNNING) else state

            assert wait_for(new_job_state, "the second job's outcome", timeout=90) is JobState.DONE
            assert [p for p in settings.output_dir.rglob("*.dcm") if p.is_file()]
        finally:
            service.stop()
