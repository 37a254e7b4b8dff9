"""The lung SEG: written, validated by dciodvfy, read back by highdicom with the same masks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from node.outputs import codes
from node.outputs.files import write_output
from node.outputs.seg import NOT_FOR_CLINICAL_USE, build_lung_segmentation
from tests.support.analysis_factory import make_analysis, phantom_radiograph
from tests.support.dicom_tools import dciodvfy_errors
from training.dicom_export import CR_IMAGE, RadiographIdentity, radiograph_dataset


@pytest.fixture(scope="module")
def phantom():
    return phantom_radiograph(128, seed=21, findings=["Mass"])


@pytest.fixture(scope="module")
def source(phantom, tmp_path_factory):
    """The source DX as the worker reads it from the spool."""
    path = tmp_path_factory.mktemp("src") / "dx.dcm"
    radiograph_dataset(phantom.image, RadiographIdentity.new(), pixel_spacing_mm=phantom.pixel_spacing_mm).save_as(
        path, enforce_file_format=True
    )
    return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def written(source, phantom, tmp_path_factory):
    """A demo-model SEG written under an output directory and read back from disk."""
    analysis = make_analysis(phantom, clinical_use=False)
    path = write_output(tmp_path_factory.mktemp("out"), build_lung_segmentation(source, analysis))
    return path, analysis


def test_seg_passes_dciodvfy(written) -> None:
    path, _ = written
    assert dciodvfy_errors(path) == []


def test_segread_gives_back_the_input_masks(written, source) -> None:
    path, analysis = written
    seg = hd.seg.segread(path)
    masks = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=False)
    assert masks.shape == (1, source.Rows, source.Columns, 2)
    np.testing.assert_array_equal(masks[0, ..., 0].astype(bool), analysis.segmentation.left)
    np.testing.assert_array_equal(masks[0, ..., 1].astype(bool), analysis.segmentation.right)


def test_segments_are_left_then_right_lung_snomed_coded(written) -> None:
    path, _ = written
    ds = pydicom.dcmread(path)
    for item, laterality, structure in zip(
        ds.SegmentSequence, (codes.LEFT, codes.RIGHT), (codes.LEFT_LUNG, codes.RIGHT_LUNG)
    ):
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == ("91723000", "SCT")
        assert (kind.CodeValue, kind.CodingSchemeDesignator) == ("39607008", "SCT")
        assert kind.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == laterality.value
        assert item.PrimaryAnatomicStructureSequence[0].CodeValue == structure.value
        assert item.SegmentAlgorithmType == "AUTOMATIC"
    assert [item.SegmentLabel for item in ds.SegmentSequence] == ["Left lung", "Right lung"]


def test_seg_names_the_segmenter_and_its_version(written) -> None:
    path, analysis = written
    ds = pydicom.dcmread(path)
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == analysis.segmenter.name
    assert algorithm.AlgorithmVersion == analysis.segmenter.version
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == codes.ARTIFICIAL_INTELLIGENCE.value
    ours = [item for item in ds.ContributingEquipmentSequence if item.Manufacturer == "cxr-node"]
    assert len(ours) == 1
    assert ours[0].DeviceUID == analysis.segmenter.device_uid
    assert ours[0].PurposeOfReferenceCodeSequence[0].CodeValue == codes.PROCESSING_EQUIPMENT.value
    assert ours[0].ManufacturerModelName == analysis.segmenter.name
    assert ds.Manufacturer == "cxr-node"


def test_seg_sits_in_the_source_study_as_a_new_series_referencing_the_image(written, source) -> None:
    path, _ = written
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    referenced = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless


def test_viewer_workarounds_are_in_place(written, source) -> None:
    path, _ = written
    ds = pydicom.dcmread(path)
    assert list(ds.PatientOrientation) == list(source.PatientOrientation)
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert "PixelMeasuresSequence" in shared


def test_demo_seg_says_not_for_clinical_use(written) -> None:
    ds = pydicom.dcmread(written[0])
    assert ds.SeriesDescription.startswith(NOT_FOR_CLINICAL_USE)
    assert NOT_FOR_CLINICAL_USE in ds.ContentDescription
    assert NOT_FOR_CLINICAL_USE in ds.ImageComments


def test_clinical_seg_carries_no_demo_statement(source, phantom) -> None:
    seg = build_lung_segmentation(source, make_analysis(phantom, clinical_use=True))
    texts = [str(seg.get(k, "")) for k in ("SeriesDescription", "ContentDescription", "ImageComments")]
    assert not any(NOT_FOR_CLINICAL_USE in text for text in texts)


def test_seg_of_a_cr_with_imager_spacing_only_reads_back(phantom, tmp_path: Path) -> None:
    ds = radiograph_dataset(phantom.image, RadiographIdentity.new(), modality="CR", sop_class_uid=CR_IMAGE)
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.2, 0.2]
    analysis = make_analysis(phantom)
    path = write_output(tmp_path, build_lung_segmentation(ds, analysis))
    assert dciodvfy_errors(path) == []
    masks = hd.seg.segread(path).get_pixels_by_source_instance([ds.SOPInstanceUID], combine_segments=False)
    np.testing.assert_array_equal(masks[0, ..., 0].astype(bool), analysis.segmentation.left)


def test_building_twice_gives_the_same_uids(source, phantom) -> None:
    one = build_lung_segmentation(source, make_analysis(phantom, seed=1))
    two = build_lung_segmentation(source, make_analysis(phantom, seed=2))
    assert (one.SOPInstanceUID, one.SeriesInstanceUID) == (two.SOPInstanceUID, two.SeriesInstanceUID)
    assert one.SegmentSequence[0].TrackingUID == two.SegmentSequence[0].TrackingUID


def test_mask_of_the_wrong_size_is_refused_with_the_rule(source, phantom) -> None:
    analysis = make_analysis(phantom)
    small = dataclasses.replace(analysis.segmentation, left=analysis.segmentation.left[:64, :64])
    with pytest.raises(ValueError, match=r"left lung mask must match the source image's Rows x Columns \(128 x 128\); got 64 x 64"):
        build_lung_segmentation(source, dataclasses.replace(analysis, segmentation=small))


def test_failed_segmentation_gets_no_seg(source, phantom) -> None:
    analysis = make_analysis(phantom)
    failed = dataclasses.replace(analysis.segmentation, ok=False, failure_reason="left lung area implausible")
    with pytest.raises(ValueError, match="segmentation failed \\(left lung area implausible\\)"):
        build_lung_segmentation(source, dataclasses.replace(analysis, segmentation=failed))
