"""Which instances are frontal chest radiographs, and the reasons for all the others."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from node.processing.selection import classify_instance
from training.dicom_export import SECONDARY_CAPTURE, RadiographIdentity, radiograph_dataset

_IMAGE = np.linspace(0.0, 1.0, 16 * 16, dtype=np.float32).reshape(16, 16)


def _dx(**kwargs: object) -> Dataset:
    return radiograph_dataset(_IMAGE, RadiographIdentity.new(), **kwargs)  # type: ignore[arg-type]


def _code(value: str, scheme: str = "SCT", meaning: str = "") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning or value
    return item


@pytest.mark.parametrize("view", ["PA", "AP"])
def test_frontal_chest_dx_is_accepted_with_its_view(view: str) -> None:
    selection = classify_instance(_dx(view_position=view))
    assert selection.accepted and selection.reason is None
    assert selection.view_position == view


def test_frontal_chest_cr_is_accepted() -> None:
    assert classify_instance(_dx(modality="CR", sop_class_uid="1.2.840.10008.5.1.4.1.1.1")).accepted


def test_lateral_dx_is_refused_naming_the_view() -> None:
    selection = classify_instance(_dx(view_position="LL"))
    assert not selection.accepted
    assert selection.reason == "view position LL is not a frontal (PA or AP) view"


def test_abdomen_dx_is_refused_naming_the_body_part() -> None:
    selection = classify_instance(_dx(body_part="ABDOMEN"))
    assert not selection.accepted
    assert selection.reason == "body part ABDOMEN is not the chest"


def test_other_modality_is_refused_naming_it() -> None:
    ds = _dx()
    ds.Modality = "CT"
    selection = classify_instance(ds)
    assert not selection.accepted and selection.reason is not None
    assert "modality CT is not a projection radiograph" in selection.reason


def test_anatomic_region_code_decides_when_body_part_is_absent() -> None:
    chest = _dx()
    del chest.BodyPartExamined
    assert classify_instance(chest).accepted  # AnatomicRegionSequence: SCT 43799004
    hand = _dx(body_part="HAND")
    del hand.BodyPartExamined
    selection = classify_instance(hand)
    assert not selection.accepted and selection.reason == "anatomic region SCT 85562004 is not the chest"


def test_chest_series_description_stands_in_for_a_missing_body_part() -> None:
    ds = _dx()
    del ds.BodyPartExamined, ds.AnatomicRegionSequence
    ds.StudyDescription = ""
    ds.SeriesDescription = "THORAX PA"
    assert classify_instance(ds).accepted
    ds.SeriesDescription = "PA"
    selection = classify_instance(ds)
    assert not selection.accepted and selection.reason is not None
    assert selection.reason.startswith("body part not stated")


def test_view_code_sequence_decides_when_view_position_is_absent() -> None:
    ds = _dx()
    del ds.ViewPosition
    ds.ViewCodeSequence = [_code("399348003", meaning="antero-posterior")]
    selection = classify_instance(ds)
    assert selection.accepted and selection.view_position == "AP"
    ds.ViewCodeSequence = [_code("399173006", meaning="left lateral")]
    selection = classify_instance(ds)
    assert not selection.accepted and selection.reason == "view code SCT 399173006 is a lateral view"


def test_patient_orientation_decides_when_no_view_is_coded() -> None:
    ds = _dx()
    del ds.ViewPosition
    ds.SeriesDescription = ""
    ds.PatientOrientation = ["L", "F"]
    assert classify_instance(ds).view_position == "PA"
    ds.PatientOrientation = ["A", "F"]
    selection = classify_instance(ds)
    assert not selection.accepted and selection.reason == "patient orientation A/F is a lateral projection"


def test_unknown_view_is_refused() -> None:
    ds = _dx()
    del ds.ViewPosition, ds.PatientOrientation
    ds.SeriesDescription = "CHEST"
    selection = classify_instance(ds)
    assert not selection.accepted and selection.reason is not None
    assert selection.reason.startswith("view unknown")


def test_lateral_named_in_series_description_is_refused() -> None:
    ds = _dx()
    del ds.ViewPosition, ds.PatientOrientation
    ds.SeriesDescription = "CHEST LAT"
    assert classify_instance(ds).reason == "series description names a lateral view"


def test_secondary_capture_needs_the_header_to_say_chest() -> None:
    stated = _dx(modality="OT", sop_class_uid=SECONDARY_CAPTURE)
    assert classify_instance(stated).accepted
    described = _dx(modality="OT", sop_class_uid=SECONDARY_CAPTURE)
    del described.BodyPartExamined, described.AnatomicRegionSequence
    described.SeriesDescription = "CHEST PA"
    assert not classify_instance(described).accepted


def test_image_without_pixels_or_with_frames_is_refused() -> None:
    no_pixels = _dx()
    del no_pixels.PixelData
    assert classify_instance(no_pixels).reason == "no Pixel Data: not an image"
    multi = _dx()
    multi.NumberOfFrames = 3
    assert classify_instance(multi).reason == "3 frames: the models read single-frame radiographs"


def test_sr_seg_and_the_nodes_own_outputs_are_refused_as_companions_first() -> None:
    sr = Dataset()
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR, no Pixel Data
    assert classify_instance(sr).reason == (
        "Comprehensive SR Storage is not a radiograph (SR/SEG/KOS/GSPS are stored, not analysed)"
    )
    seg = _dx(view_position="PA")  # a chest header, but a SEG of the node: never a radiograph
    seg.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    seg.Manufacturer = "cxr-node"
    selection = classify_instance(seg)
    assert not selection.accepted
    assert selection.reason == "output of cxr-node (Segmentation Storage), not a radiograph"
