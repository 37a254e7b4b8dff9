"""C-STORE into a real listener on loopback: durability, rows, duplicates, re-opening, bad input."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless
from pynetdicom import _config
from sqlalchemy import text, update

from node.constants import PARTIAL_SUFFIX, StudyState
from node.db import Study
from node.scp import statuses
from tests.support.listener import VERIFICATION_CONTEXT, Node
from tests.support.dicom_files import make_instance, make_study
from training.dicom_export import DX_FOR_PRESENTATION, DX_FOR_PROCESSING, RadiographIdentity, radiograph_dataset



@pytest.fixture
def send_files_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make pynetdicom's SCU send a file's bytes as they are (truncated or garbled ones too)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def _store(node: Node, paths: list[Path], calling_aet: str = "TESTSCU") -> list[int]:
    sop_classes = sorted({dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPClassUID for p in paths})
    syntaxes = sorted({str(dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in paths})
    assoc = node.associate([(c, syntaxes) for c in sop_classes], calling_aet=calling_aet)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(p).Status) for p in paths]
    finally:
        assoc.release()


def test_echo_answers_success(node: Node) -> None:
    assoc = node.associate([VERIFICATION_CONTEXT])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == statuses.SUCCESS
    assoc.release()


def test_store_writes_the_file_under_validated_uids_and_commits_the_row(node: Node, tmp_path: Path) -> None:
    made = make_instance(tmp_path / "in.dcm", JPEGLSLossless)
    assert _store(node, [made.path], calling_aet="MODALITY1") == [statuses.SUCCESS]

    ident = made.identity
    spooled = node.spool / ident.study_instance_uid / ident.series_instance_uid / f"{ident.sop_instance_uid}.dcm"
    assert spooled.is_file()
    assert not list(node.spool.rglob(f"*{PARTIAL_SUFFIX}"))
    ds = dcmread(spooled)
    assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert ds.file_meta.SourceApplicationEntityTitle == "MODALITY1"
    assert ds.SOPInstanceUID == ident.sop_instance_uid
    assert np.array_equal(ds.pixel_array, made.pixels)

    (row,) = node.instances()
    assert row.sop_instance_uid == ident.sop_instance_uid
    assert row.series_instance_uid == ident.series_instance_uid
    assert row.transfer_syntax_uid == JPEGLSLossless
    assert row.calling_aet == "MODALITY1"
    assert row.size_bytes == spooled.stat().st_size
    assert node.spool / row.path == spooled
    study = node.study(ident.study_instance_uid)
    assert study is not None and study.state == StudyState.RECEIVED.value and study.generation == 0
    assert study.calling_aet == "MODALITY1" and study.called_aet == "CXRNODE"
    assert [s.sop_instance_uid for s in node.stored] == [ident.sop_instance_uid]


def test_same_instance_sent_twice_is_stored_once_and_answered_success(node: Node, tmp_path: Path) -> None:
    made = make_instance(tmp_path / "in.dcm")
    assert _store(node, [made.path, made.path]) == [statuses.SUCCESS, statuses.SUCCESS]
    assert _store(node, [made.path]) == [statuses.SUCCESS]
    assert len(node.instances()) == 1
    assert len(node.stored) == 1
    assert len(list(node.spool.rglob("*.dcm"))) == 1


def test_instance_for_a_processed_study_reopens_it_with_a_new_generation(node: Node, tmp_path: Path) -> None:
    first, second, third = make_study(tmp_path / "study", 3)
    study_uid = first.identity.study_instance_uid
    assert _store(node, [first.path]) == [statuses.SUCCESS]
    before = node.study(study_uid)
    assert before is not None

    with node.database.session() as session:
        session.execute(update(Study).values(state=StudyState.DONE.value))
    assert _store(node, [second.path]) == [statuses.SUCCESS]
    reopened = node.study(study_uid)
    assert reopened is not None
    assert reopened.state == StudyState.RECEIVED.value
    assert reopened.generation == 1
    assert reopened.last_received_at > before.last_received_at

    # Still receiving: only the quiet-period clock moves, the generation stays.
    assert _store(node, [third.path]) == [statuses.SUCCESS]
    still = node.study(study_uid)
    assert still is not None and still.generation == 1 and still.state == StudyState.RECEIVED.value
    assert still.last_received_at > reopened.last_received_at
    assert [s.outcome.value for s in node.stored] == ["new-study", "reopened", "added"]


def test_every_reopenable_state_goes_back_to_received(node: Node, tmp_path: Path) -> None:
    made = make_study(tmp_path / "study", 1 + 5)
    assert _store(node, [made[0].path]) == [statuses.SUCCESS]
    study_uid = made[0].identity.study_instance_uid
    for generation, state in enumerate(
        (StudyState.QUEUED, StudyState.RUNNING, StudyState.DONE, StudyState.DELIVERED, StudyState.FAILED), start=1
    ):
        with node.database.session() as session:
            session.execute(update(Study).values(state=state.value))
        assert _store(node, [made[generation].path]) == [statuses.SUCCESS]
        study = node.study(study_uid)
        assert study is not None and (study.state, study.generation) == (StudyState.RECEIVED.value, generation)


def _without_pixel_data(path: Path) -> Path:
    ds = radiograph_dataset(np.zeros((8, 8), np.uint16), RadiographIdentity.new())
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    return path


def _truncated(path: Path, tmp_path: Path) -> Path:
    made = make_instance(tmp_path / "whole.dcm", size=16)
    data = made.path.read_bytes()
    path.write_bytes(data[: len(data) - 100])  # cuts into Pixel Data
    return path


def _garbled(path: Path, tmp_path: Path) -> Path:
    made = make_instance(tmp_path / "good.dcm", size=16)
    data = bytearray(made.path.read_bytes())
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    rng = np.random.default_rng(7)
    data[meta_end:] = rng.integers(0, 256, len(data) - meta_end, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def _meta_says(path: Path, tmp_path: Path, **meta: str) -> Path:
    made = make_instance(tmp_path / f"src-{path.stem}.dcm", size=16)
    ds = dcmread(made.path)
    for keyword, value in meta.items():
        setattr(ds.file_meta, keyword, value)
    ds.save_as(path)  # enforce_file_format would copy the data set's UIDs back into the meta
    return path


def _bad_uid(path: Path, uid: str) -> Path:
    ds = radiograph_dataset(np.zeros((8, 8), np.uint16), RadiographIdentity.new())
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        ds.StudyInstanceUID = uid
    ds.save_as(path, enforce_file_format=True)
    return path


def test_each_bad_input_gets_its_status_while_a_good_study_completes_in_parallel(
    start_node: Callable[..., Node], tmp_path: Path, send_files_raw: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="node")
    node = start_node(max_instance_bytes=4096)
    bad = tmp_path / "bad"
    bad.mkdir()
    cases = {
        "no pixel data": (_without_pixel_data(bad / "nopixels.dcm"), statuses.DATASET_WITHOUT_PIXEL_DATA),
        "truncated": (_truncated(bad / "truncated.dcm", tmp_path), statuses.CANNOT_UNDERSTAND_CORRUPT),
        "garbled": (_garbled(bad / "garbled.dcm", tmp_path), statuses.CANNOT_UNDERSTAND_CORRUPT),
        "path traversal in a UID": (_bad_uid(bad / "traversal.dcm", "../../etc"), statuses.CANNOT_UNDERSTAND_INVALID_UID),
        "SOP Instance UID differs": (
            _meta_says(bad / "other-instance.dcm", tmp_path, MediaStorageSOPInstanceUID="1.2.3.4"),
            statuses.CANNOT_UNDERSTAND_INSTANCE_MISMATCH,
        ),
        "SOP Class differs": (
            _meta_says(bad / "other-class.dcm", tmp_path, MediaStorageSOPClassUID=DX_FOR_PROCESSING),
            statuses.DATASET_SOP_CLASS_MISMATCH,
        ),
    }
    good = make_study(tmp_path / "good", 12, size=8)  # 8x8: under the 4096-byte limit
    good_statuses: list[int] = []

    def send_good() -> None:
        good_statuses.extend(_store(node, [g.path for g in good], calling_aet="GOODPACS"))

    sender = threading.Thread(target=send_good)
    sender.start()
    syntaxes = [ExplicitVRLittleEndian]
    assoc = node.associate([(DX_FOR_PRESENTATION, syntaxes), (DX_FOR_PROCESSING, syntaxes)], calling_aet="BADPACS")
    assert assoc.is_established
    answered = {name: int(assoc.send_c_store(path).Status) for name, (path, _status) in cases.items()}
    # The association is still usable after every refusal.
    assert assoc.send_c_store(good[0].path).Status == statuses.SUCCESS
    assoc.release()
    sender.join(timeout=60)

    assert answered == {name: status for name, (_path, status) in cases.items()}
    assert good_statuses == [statuses.SUCCESS] * len(good)
    stored = {row.sop_instance_uid for row in node.instances()}
    assert stored == {g.identity.sop_instance_uid for g in good}
    assert len(list(node.spool.rglob("*.dcm"))) == len(good)
    assert not list((node.spool / ".incoming").iterdir())  # refused data sets leave nothing behind
    study = node.study(good[0].identity.study_instance_uid)
    assert study is not None and study.state == StudyState.RECEIVED.value

    # One log line per refusal, naming the status; never the patient's name or ID.
    refusals = [r.getMessage() for r in caplog.records if "refused with" in r.getMessage()]
    assert len(refusals) == len(cases)
    for status in {status for _path, status in cases.values()}:
        assert any(f"0x{status:04X}" in line for line in refusals)
    identity = good[0].identity
    assert identity.patient_name not in caplog.text and identity.patient_id not in caplog.text


def test_row_that_cannot_be_committed_gets_a702_and_leaves_no_file(node: Node, tmp_path: Path) -> None:
    with node.database.engine.begin() as connection:
        connection.execute(
            text("CREATE TRIGGER refuse_instances BEFORE INSERT ON instances BEGIN SELECT RAISE(ABORT, 'refused'); END")
        )
    made = make_instance(tmp_path / "in.dcm", size=16)
    assert _store(node, [made.path]) == [statuses.OUT_OF_RESOURCES_DATABASE]
    assert not list(node.spool.rglob("*.dcm"))
    assert not list((node.spool / ".incoming").iterdir())
    assert node.stored == []

    with node.database.engine.begin() as connection:
        connection.execute(text("DROP TRIGGER refuse_instances"))
    assert _store(node, [made.path]) == [statuses.SUCCESS]  # the sender's retry succeeds
    assert len(node.instances()) == 1


def test_success_comes_after_fsync_of_file_and_directory(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Success is answered only after the file and its directory were fsync'ed (and renamed)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", recording_fsync)
    made = make_instance(tmp_path / "in.dcm", size=16)
    assert _store(node, [made.path]) == [statuses.SUCCESS]
    ident = made.identity
    series_dir = node.spool / ident.study_instance_uid / ident.series_instance_uid
    # The data set was written to spool/.incoming while it arrived; that file was fsync'ed
    # before it was renamed into place.
    assert node.handle.incoming.taken == 1
    assert any(p.startswith(str(node.spool / ".incoming")) and p.endswith(PARTIAL_SUFFIX) for p in synced)
    assert str(series_dir) in synced  # the rename made durable
    assert str(series_dir.parent) in synced  # the new series directory's entry
    assert str(node.spool) in synced  # the new study directory's entry
