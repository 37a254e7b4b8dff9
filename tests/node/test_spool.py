"""The durable spool: paths from validated UIDs only, atomic writes, no debris."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from node.constants import PARTIAL_SUFFIX
from node.spool import Spool, write_atomically

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"


def test_file_lands_at_study_series_instance_path(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    written = spool.write(STUDY, SERIES, SOP, [b"abc", memoryview(b"def")])
    assert written.relative_path == f"{STUDY}/{SERIES}/{SOP}.dcm"
    assert written.path == tmp_path / "spool" / STUDY / SERIES / f"{SOP}.dcm"
    assert written.path.read_bytes() == b"abcdef"
    assert written.size_bytes == 6
    assert spool.path_of(written.relative_path) == written.path


@pytest.mark.parametrize(
    ("study", "series", "sop"),
    [("..", SERIES, SOP), (STUDY, "../../x", SOP), (STUDY, SERIES, "/etc/passwd"), (STUDY, SERIES, "1.2.3 ")],
)
def test_header_text_that_is_not_a_uid_never_becomes_a_path(tmp_path: Path, study: str, series: str, sop: str) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(ValueError, match="is not a DICOM UID"):
        spool.write(study, series, sop, [b"x"])
    assert not any(tmp_path.rglob("*.dcm"))


def test_rewrite_replaces_the_file_atomically_and_leaves_no_partials(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.write(STUDY, SERIES, SOP, [b"first"])
    written = spool.write(STUDY, SERIES, SOP, [b"second"])
    assert written.path.read_bytes() == b"second"
    assert not list(tmp_path.rglob(f"*{PARTIAL_SUFFIX}"))


def test_failed_write_leaves_neither_a_partial_nor_a_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path)

    def chunks():  # type: ignore[no-untyped-def]
        yield b"start"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        spool.write(STUDY, SERIES, SOP, chunks())
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_partials_left_by_a_crash_are_removed_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    kept = spool.write(STUDY, SERIES, SOP, [b"whole"])
    debris = kept.path.parent / f".{SOP}.dcm.deadbeef{PARTIAL_SUFFIX}"
    debris.write_bytes(b"half")
    assert spool.remove_partials() == 1
    assert not debris.exists()
    assert kept.path.read_bytes() == b"whole"


def test_path_of_refuses_paths_leaving_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(ValueError, match="stay inside the spool"):
        spool.path_of("../outside.dcm")
    with pytest.raises(ValueError, match="stay inside the spool"):
        spool.path_of("/etc/passwd")


def test_files_are_not_world_readable(tmp_path: Path) -> None:
    written = Spool(tmp_path).write(STUDY, SERIES, SOP, [b"x"])
    assert os.stat(written.path).st_mode & 0o007 == 0


def test_free_bytes_reports_the_spool_file_system(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "not-yet-created")
    free = spool.free_bytes()
    assert 0 < free == pytest.approx(os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize, rel=0.01)


def test_adopt_moves_a_durable_file_into_place(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.ensure_root()
    received = tmp_path / "spool" / f"received{PARTIAL_SUFFIX}"
    received.write_bytes(b"whole file")
    spooled = spool.adopt(STUDY, SERIES, SOP, received)
    assert spooled.path.read_bytes() == b"whole file" and spooled.size_bytes == 10
    assert not received.exists()


def test_adopt_refuses_non_uids_and_leaves_the_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    received = tmp_path / f"received{PARTIAL_SUFFIX}"
    received.write_bytes(b"x")
    with pytest.raises(ValueError, match="is not a DICOM UID"):
        spool.adopt("../..", SERIES, SOP, received)
    assert received.exists()


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_spool_files_and_directories_are_for_the_service_account_only(tmp_path: Path) -> None:
    written = Spool(tmp_path / "spool").write(STUDY, SERIES, SOP, [b"x"])
    assert _mode(written.path) == 0o600
    assert _mode(written.path.parent) == 0o700  # series
    assert _mode(written.path.parent.parent) == 0o700  # study
    assert _mode(tmp_path / "spool") == 0o700


def test_output_files_use_the_same_atomic_private_write(tmp_path: Path) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from node.outputs.files import write_output

    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = STUDY, SERIES, SOP
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = SOP
    ds.file_meta.ImplementationClassUID = generate_uid()
    path = write_output(tmp_path / "outputs", ds)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700 and _mode(path.parent.parent) == 0o700
    assert dcmread(path).SOPInstanceUID == SOP
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial left


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path: Path) -> None:
    target = tmp_path / "out" / "file.dcm"
    write_atomically(target, lambda handle: handle.write(b"old"))

    def fail(handle: object) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomically(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["file.dcm"]


def test_the_sqlite_database_is_for_the_service_account_only(tmp_path: Path) -> None:
    from node.db import Database

    database = Database(f"sqlite:///{tmp_path / 'data' / 'cxr-node.sqlite3'}")
    database.ensure_schema()
    database.engine.dispose()
    files = sorted(p for p in (tmp_path / "data").iterdir())
    assert files, "no database file"
    assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}
    assert _mode(tmp_path / "data") == 0o700


def test_the_listeners_incoming_directory_is_private(tmp_path: Path) -> None:
    from node.scp.incoming import IncomingWriter

    writer = IncomingWriter(tmp_path / "spool")
    try:
        assert _mode(writer.directory) == 0o700
    finally:
        writer.close()
