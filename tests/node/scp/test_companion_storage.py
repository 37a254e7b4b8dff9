"""SEG and SR (the node's own outputs coming back in a whole study) are accepted and stored."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from node.constants import BASIC_TEXT_SR, COMPREHENSIVE_3D_SR, SEGMENTATION, StudyState
from node.scp import statuses
from tests.support.companion_objects import write_node_outputs
from tests.support.dcmtk import storescu
from tests.support.listener import Node


def test_storescu_seg_and_sr_are_answered_success_and_stored(node: Node, tmp_path: Path) -> None:
    files = write_node_outputs(tmp_path / "outputs")
    # The SEG is JPEG 2000 Lossless (storescu proposes it with -xv), the SR explicit VR.
    for path, extra in ((files.seg, ["-xv"]), (files.sr, [])):
        run = storescu(node.port, [path], calling_aet="PACS", extra=extra)
        assert run.returncode == 0, run.output[-2000:]
        assert run.statuses == [statuses.SUCCESS]

    rows = {row.sop_class_uid: row for row in node.instances()}
    assert set(rows) == {SEGMENTATION, COMPREHENSIVE_3D_SR}
    for path in files.paths:
        sent = dcmread(path)
        row = rows[sent.SOPClassUID]
        stored = dcmread(node.spool / row.path)
        assert stored.SOPInstanceUID == sent.SOPInstanceUID == row.sop_instance_uid
        assert row.transfer_syntax_uid == sent.file_meta.TransferSyntaxUID
    # A study the node had not seen is created as usual (its worker will skip both objects).
    study = node.study(dcmread(files.seg).StudyInstanceUID)
    assert study is not None and study.state == StudyState.RECEIVED.value


def _without_pixel_data(sop_class: str, transfer_syntax: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    return ds


def test_an_sr_without_pixel_data_in_implicit_vr_is_stored(node: Node) -> None:
    ds = _without_pixel_data(BASIC_TEXT_SR, ImplicitVRLittleEndian)
    assoc = node.associate([(BASIC_TEXT_SR, [ImplicitVRLittleEndian])])
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == statuses.SUCCESS
    assert [row.sop_instance_uid for row in node.instances()] == [ds.SOPInstanceUID]


def test_an_image_class_without_pixel_data_is_still_refused(node: Node) -> None:
    ds = _without_pixel_data("1.2.840.10008.5.1.4.1.1.1.1", ExplicitVRLittleEndian)  # DX for presentation
    assoc = node.associate([(ds.SOPClassUID, [ExplicitVRLittleEndian])])
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == statuses.DATASET_WITHOUT_PIXEL_DATA
    assert node.instances() == []


def test_the_sr_classes_accept_only_the_non_image_transfer_syntaxes(node: Node) -> None:
    from pydicom.uid import JPEG2000Lossless

    assoc = node.associate([(COMPREHENSIVE_3D_SR, [JPEG2000Lossless]), (SEGMENTATION, [JPEG2000Lossless])])
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert accepted == {SEGMENTATION}
