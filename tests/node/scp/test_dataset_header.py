"""The header walker: UIDs and Pixel Data found without decoding; damage always noticed."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from pynetdicom.dsutils import split_dataset

from node.scp.contexts import TRANSFER_SYNTAXES
from node.scp.dataset_header import (
    MODALITY,
    SERIES_INSTANCE_UID,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    CorruptDatasetError,
    read_header,
)
from tests.support.dicom_files import make_instance
from training.dicom_export import RadiographIdentity, radiograph_dataset


def _data_set_bytes(path: Path) -> tuple[bytes, str]:
    meta, offset = split_dataset(path)
    return path.read_bytes()[offset:], str(meta.TransferSyntaxUID)


def _with_undefined_length_sequences(tmp_path: Path, transfer_syntax: str) -> Path:
    ds = radiograph_dataset(np.zeros((8, 8), np.uint16), RadiographIdentity.new())
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "1", "99X", "nested"
    item = Dataset()
    item.ConceptNameCodeSequence = [inner]
    ds.AcquisitionContextSequence = [item]
    for element in (ds["AcquisitionContextSequence"], item["ConceptNameCodeSequence"], ds["AnatomicRegionSequence"]):
        element.is_undefined_length = True
        for nested in element.value:
            nested.is_undefined_length_sequence_item = True
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    path = tmp_path / "nested.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("transfer_syntax", TRANSFER_SYNTAXES)
def test_uids_and_pixel_data_are_found_in_every_transfer_syntax(tmp_path: Path, transfer_syntax: str) -> None:
    made = make_instance(tmp_path / "in.dcm", transfer_syntax, size=32)  # JPEG 2000 needs >= 32
    data, ts = _data_set_bytes(made.path)
    assert ts == transfer_syntax
    header = read_header(data, ts)
    ident = made.identity
    assert header.get(STUDY_INSTANCE_UID) == ident.study_instance_uid
    assert header.get(SERIES_INSTANCE_UID) == ident.series_instance_uid
    assert header.get(SOP_INSTANCE_UID) == ident.sop_instance_uid
    assert header.get(SOP_CLASS_UID) == made.sop_class_uid
    assert header.get(MODALITY) == "DX"
    assert header.has_pixel_data
    assert header.element_count == len(dcmread(made.path))


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_nested_undefined_length_sequences_are_walked(tmp_path: Path, transfer_syntax: str) -> None:
    path = _with_undefined_length_sequences(tmp_path, transfer_syntax)
    data, ts = _data_set_bytes(path)
    plain = zlib.decompress(data, -zlib.MAX_WBITS) if ts == DeflatedExplicitVRLittleEndian else data
    assert plain.count(b"\xfe\xff\xdd\xe0") == 3  # three sequence delimiters
    assert plain.count(b"\xfe\xff\x0d\xe0") == 3  # three item delimiters
    header = read_header(data, ts)
    assert header.has_pixel_data
    assert header.get(SOP_INSTANCE_UID) == dcmread(path).SOPInstanceUID


def test_missing_pixel_data_is_reported_not_raised(tmp_path: Path) -> None:
    ds = radiograph_dataset(np.zeros((8, 8), np.uint16), RadiographIdentity.new())
    del ds.PixelData
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    header = read_header(*_data_set_bytes(tmp_path / "x.dcm"))
    assert not header.has_pixel_data
    assert header.get(SOP_INSTANCE_UID) == ds.SOPInstanceUID


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless])
@pytest.mark.parametrize("cut", [1, 7, 100, 400])
def test_any_truncation_is_corrupt(tmp_path: Path, transfer_syntax: str, cut: int) -> None:
    made = make_instance(tmp_path / "in.dcm", transfer_syntax, size=16)
    data, ts = _data_set_bytes(made.path)
    with pytest.raises(CorruptDatasetError):
        read_header(data[:-cut], ts)


def test_truncated_nested_sequence_is_corrupt(tmp_path: Path) -> None:
    data, ts = _data_set_bytes(_with_undefined_length_sequences(tmp_path, ExplicitVRLittleEndian))
    end_of_sequences = data.rindex(b"\xfe\xff\xdd\xe0")
    with pytest.raises(CorruptDatasetError):
        read_header(data[:end_of_sequences], ts)


def test_truncated_deflate_stream_is_corrupt(tmp_path: Path) -> None:
    made = make_instance(tmp_path / "in.dcm", DeflatedExplicitVRLittleEndian, size=16)
    data, ts = _data_set_bytes(made.path)
    with pytest.raises(CorruptDatasetError, match="deflate"):
        read_header(data[: len(data) // 2], ts)


def test_garbage_and_emptiness_are_corrupt() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        garbage = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
        with pytest.raises(CorruptDatasetError):
            read_header(garbage, ExplicitVRLittleEndian)
    with pytest.raises(CorruptDatasetError, match="empty"):
        read_header(b"", ExplicitVRLittleEndian)


def test_tags_out_of_order_are_corrupt(tmp_path: Path) -> None:
    made = make_instance(tmp_path / "in.dcm", ImplicitVRLittleEndian, size=4)
    data, ts = _data_set_bytes(made.path)
    # Swap the first two elements (both short, implicit VR: tag + 4-byte length + value).
    first_len = 8 + int.from_bytes(data[4:8], "little")
    second_len = 8 + int.from_bytes(data[first_len + 4 : first_len + 8], "little")
    swapped = data[first_len : first_len + second_len] + data[:first_len] + data[first_len + second_len :]
    with pytest.raises(CorruptDatasetError, match="ascending"):
        read_header(swapped, ts)
