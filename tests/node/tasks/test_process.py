"""process_study: every instance opened from the spool, decoded in each transfer syntax, recorded."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000, JPEG2000Lossless, RLELossless, generate_uid

from node.faults import ImageFault
from node.completion import queue_quiet_studies
from node.constants import JobState, StudyState
from sqlalchemy import select

from node.db import Instance, Job, Study
from node.db.schema import Result
from node.outputs.builders import BuildInput, OutputBuilder
from node.tasks.dispatch import InProcessDispatcher
from node.tasks.process import process_study
from training.dicom_export import RadiographIdentity, radiograph_dataset
from tests.support.study_rows import add_instance, add_study, make_database, make_settings

# Transfer syntaxes the listener accepts, and how the test makes each: DCMTK tools where a
# modality would use them, pydicom's encoders for JPEG 2000. (uid, tool argv, 8-bit source, lossless)
SYNTAXES: list[tuple[str, list[str] | None, bool, bool]] = [
    ("1.2.840.10008.1.2", ["dcmconv", "+ti"], False, True),  # Implicit VR Little Endian
    ("1.2.840.10008.1.2.1", ["dcmconv", "+te"], False, True),  # Explicit VR Little Endian
    ("1.2.840.10008.1.2.1.99", ["dcmconv", "+td"], False, True),  # Deflated Explicit VR Little Endian
    ("1.2.840.10008.1.2.4.50", ["dcmcjpeg", "+eb"], True, False),  # JPEG Baseline (8-bit)
    ("1.2.840.10008.1.2.4.51", ["dcmcjpeg", "+ee"], False, False),  # JPEG Extended (12-bit)
    ("1.2.840.10008.1.2.4.57", ["dcmcjpeg", "+el"], False, True),  # JPEG Lossless
    ("1.2.840.10008.1.2.4.70", ["dcmcjpeg", "+e1"], False, True),  # JPEG Lossless SV1
    ("1.2.840.10008.1.2.4.80", ["dcmcjpls", "+el"], False, True),  # JPEG-LS Lossless
    ("1.2.840.10008.1.2.4.81", ["dcmcjpls", "+en"], False, False),  # JPEG-LS Near-Lossless
    (JPEG2000Lossless, None, False, True),
    (JPEG2000, None, False, False),
    (RLELossless, ["dcmcrle"], False, True),
]


def _source_file(directory: Path, study_uid: str, *, eight_bit: bool, seed: int) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(seed)
    bits = 8 if eight_bit else 12
    top = (1 << bits) - 1
    ramp = np.linspace(0.0, 1.0, 64)[None, :] * np.linspace(0.2, 1.0, 48)[:, None]  # smooth, like anatomy
    noise = rng.integers(-3, 4, size=(48, 64))
    pixels = np.clip(np.rint(ramp * top) + noise, 0, top).astype(np.uint16)
    pixels[:8, :8] = 0
    pixels[-8:, -8:] = top  # flat extremes survive lossy coding approximately
    ds = radiograph_dataset(pixels, RadiographIdentity.new(study_uid), bits_stored=bits)
    if eight_bit:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = pixels.astype(np.uint8).tobytes()
        ds.WindowCenter, ds.WindowWidth = 128, 256
    path = directory / f"source-{seed}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, pixels


def _encode(source: Path, target: Path, uid: str, argv: list[str] | None) -> bytes:
    if argv is None:
        ds = pydicom.dcmread(source)
        kwargs: dict[str, Any] = {"j2k_cr": [5]} if uid == JPEG2000 else {}
        ds.compress(uid, **kwargs)
        ds.save_as(target, enforce_file_format=True)
    else:
        subprocess.run([*argv, str(source), str(target)], check=True, capture_output=True, timeout=60)
    encoded = pydicom.dcmread(target, stop_before_pixels=True)
    assert encoded.file_meta.TransferSyntaxUID == uid, f"{argv} wrote {encoded.file_meta.TransferSyntaxUID}"
    return target.read_bytes()


@pytest.fixture()
def node(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path)
    database = make_database(settings)
    dispatcher = InProcessDispatcher(settings, database)
    yield settings, database, dispatcher.context
    dispatcher.shutdown()


def _queue(settings, database) -> int:  # type: ignore[no-untyped-def]
    [queued] = queue_quiet_studies(database, settings)
    return queued.job_id


def test_every_transfer_syntax_is_decoded_and_recorded(node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, database, context = node
    study_id, study_uid = add_study(database, quiet_for=60)
    expected: dict[int, tuple[str, np.ndarray, bool]] = {}
    for seed, (uid, argv, eight_bit, lossless) in enumerate(SYNTAXES):
        source, pixels = _source_file(tmp_path, study_uid, eight_bit=eight_bit, seed=seed)
        data = _encode(source, tmp_path / f"encoded-{seed}.dcm", uid, argv)
        instance_id, _ = add_instance(database, settings, study_id, study_uid, transfer_syntax_uid=uid, file_bytes=data)
        expected[instance_id] = (uid, pixels, lossless)
    job_id = _queue(settings, database)

    summary = process_study(job_id, context=context)

    assert summary is not None and summary["instances"] == len(SYNTAXES) and summary["decoded"] == len(SYNTAXES)
    with database.session() as session:
        for instance in session.query(Instance).filter_by(study_id=study_id):
            uid, pixels, lossless = expected[instance.id]
            found = instance.inspection
            assert found["decoded"] is True, (uid, found)
            assert found["transfer_syntax_uid"] == uid
            assert (found["rows"], found["columns"], found["shape"]) == (48, 64, [48, 64])
            assert (found["modality"], found["view_position"], found["body_part_examined"]) == ("DX", "PA", "CHEST")
            assert found["photometric_interpretation"] == "MONOCHROME2"
            assert found["job_id"] == job_id
            if lossless:
                assert (found["pixel_min"], found["pixel_max"]) == (float(pixels.min()), float(pixels.max())), uid
            else:  # lossy: the extremes survive within a few grey levels
                top = float(pixels.max())
                assert found["pixel_min"] <= 0.05 * top and found["pixel_max"] >= 0.9 * top, (uid, found)
        assert session.get(Job, job_id).state == JobState.DONE.value
        assert session.get(Study, study_id).state == StudyState.DONE.value


def test_lossless_decoding_returns_the_sent_pixels(node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from node.tasks.process import open_instance

    study_uid = generate_uid()
    for seed, (uid, argv, eight_bit, lossless) in enumerate(SYNTAXES):
        if not lossless:
            continue
        source, pixels = _source_file(tmp_path, study_uid, eight_bit=eight_bit, seed=seed)
        target = tmp_path / f"enc-{seed}.dcm"
        _encode(source, target, uid, argv)
        inspection, _, decoded = open_instance(target)
        assert decoded is not None, (uid, inspection)
        np.testing.assert_array_equal(decoded, pixels, err_msg=uid)


def test_unreadable_and_pixel_less_files_are_recorded_and_the_job_still_completes(node) -> None:  # type: ignore[no-untyped-def]
    settings, database, context = node
    study_id, study_uid = add_study(database, quiet_for=60)
    good_id, _ = add_instance(database, settings, study_id, study_uid)
    truncated_id, path = add_instance(database, settings, study_id, study_uid, seed=1)
    path.write_bytes(path.read_bytes()[:700])  # cut inside the header/pixel data
    missing_id, missing_path = add_instance(database, settings, study_id, study_uid, seed=2)
    missing_path.unlink()
    no_pixels_id, np_path = add_instance(database, settings, study_id, study_uid, seed=3)
    ds = pydicom.dcmread(np_path)
    del ds.PixelData
    ds.save_as(np_path, enforce_file_format=True)
    job_id = _queue(settings, database)

    summary = process_study(job_id, context=context)

    assert summary is not None and (summary["instances"], summary["decoded"]) == (4, 1)
    with database.session() as session:
        found = {i.id: i.inspection for i in session.query(Instance).filter_by(study_id=study_id)}
        assert found[good_id]["decoded"] is True
        assert found[truncated_id]["decoded"] is False and found[truncated_id]["error"]
        assert found[missing_id] == {"decoded": False, "error": "file missing from the spool", "transfer_syntax_uid": "1.2.840.10008.1.2.1", "job_id": job_id}
        assert found[no_pixels_id]["decoded"] is False and found[no_pixels_id]["error"] == "no pixel data"
        assert found[no_pixels_id]["view_position"] == "PA"
        assert session.get(Job, job_id).state == JobState.DONE.value


def test_a_duplicate_wake_up_does_not_process_again(node) -> None:  # type: ignore[no-untyped-def]
    settings, database, context = node
    study_id, study_uid = add_study(database, quiet_for=60)
    add_instance(database, settings, study_id, study_uid)
    job_id = _queue(settings, database)

    assert process_study(job_id, context=context) is not None
    assert process_study(job_id, context=context) is None
    with database.session() as session:
        job = session.get(Job, job_id)
        assert (job.state, job.attempts) == (JobState.DONE.value, 1)


class _FailingBuilder(OutputBuilder):
    kind, sop_class_uid, transfer_syntaxes, per_policy = "BAD", "1.2.3", ("1.2.840.10008.1.2.1",), False

    def __init__(self, error: Exception) -> None:
        self.error = error

    def build(self, given: BuildInput):  # type: ignore[no-untyped-def]
        raise self.error


def test_an_output_that_cannot_be_built_from_one_image_fails_that_image_alone(node) -> None:  # type: ignore[no-untyped-def]
    settings, database, context = node
    study_id, study_uid = add_study(database, quiet_for=60)
    add_instance(database, settings, study_id, study_uid)
    context.builders = (_FailingBuilder(ImageFault("header unusable")),)
    job_id = _queue(settings, database)

    summary = process_study(job_id, context=context)

    assert summary["instances"] == 1
    with database.session() as session:
        assert session.get(Job, job_id).state is JobState.DONE
        reasons = {r.reason for r in session.scalars(select(Result))}
    assert reasons == {"BAD could not be built: header unusable"}, reasons


def test_an_environment_fault_fails_the_job_with_its_stage(node) -> None:  # type: ignore[no-untyped-def]
    settings, database, context = node
    study_id, study_uid = add_study(database, quiet_for=60)
    add_instance(database, settings, study_id, study_uid)
    context.builders = (_FailingBuilder(OSError("disk unwritable")),)
    job_id = _queue(settings, database)

    result = process_study(job_id, context=context)

    assert result["state"] == "failed"
    with database.session() as session:
        job = session.get(Job, job_id)
        assert job.state is JobState.FAILED
        assert job.error == "stage 'analysis' failed: OSError: disk unwritable"
        assert session.get(Study, study_id).state is StudyState.FAILED
