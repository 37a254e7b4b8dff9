"""The TID 1500 SR: validated by dciodvfy, read by dcmqi's tid1500reader, findings equal the analysis."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from models.labels import FINDINGS, NO_FINDING
from node.outputs import codes
from node.outputs.files import write_output
from node.outputs.seg import NOT_FOR_CLINICAL_USE, build_lung_segmentation
from node.outputs.sr import build_measurement_report
from tests.support.analysis_factory import make_analysis, phantom_radiograph
from tests.support.dicom_tools import dciodvfy_errors, read_tid1500
from training.dicom_export import CR_IMAGE, RadiographIdentity, radiograph_dataset


@pytest.fixture(scope="module")
def phantom():
    return phantom_radiograph(128, seed=33, findings=["Mass", "Pneumonia"])


@pytest.fixture(scope="module")
def source(phantom, tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "dx.dcm"
    radiograph_dataset(phantom.image, RadiographIdentity.new(), pixel_spacing_mm=phantom.pixel_spacing_mm).save_as(
        path, enforce_file_format=True
    )
    return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def outputs(source, phantom, tmp_path_factory):
    """One SEG and the SRs of two policies (demo models), written and read back."""
    out = tmp_path_factory.mktemp("out")
    analyses = {policy: make_analysis(phantom, policy=policy, seed=7) for policy in ("loose", "tight")}
    seg_path = write_output(out, build_lung_segmentation(source, analyses["loose"]))
    seg = pydicom.dcmread(seg_path)
    sr_paths = {policy: write_output(out, build_measurement_report(source, seg, a)) for policy, a in analyses.items()}
    return seg, sr_paths, analyses


def _content_items(ds: Dataset):
    """Every content item of an SR tree, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _content_items(item)


def _name(item: Dataset) -> str:
    return item.ConceptNameCodeSequence[0].CodeMeaning


@pytest.mark.parametrize("policy", ["loose", "tight"])
def test_sr_passes_dciodvfy(outputs, policy: str) -> None:
    assert dciodvfy_errors(outputs[1][policy]) == []


def test_tid1500reader_reads_the_probabilities_of_the_analysis(outputs, tmp_path: Path) -> None:
    _, sr_paths, analyses = outputs
    report = read_tid1500(sr_paths["loose"], tmp_path / "sr.json")
    analysis = analyses["loose"]
    by_finding = {group["Finding"]["CodeValue"]: group for group in report["Measurements"]}
    for label in (*FINDINGS, NO_FINDING):
        group = by_finding[codes.FINDING_CODES[label].value]
        items = {item["quantity"]["CodeMeaning"]: item for item in group["measurementItems"]}
        probability = items[f"{label} probability"]
        assert probability["units"]["CodeValue"] == "%"
        expected = analysis.no_finding if label == NO_FINDING else analysis.probabilities[label]
        assert float(probability["value"]) / 100 == pytest.approx(expected, abs=1e-8)
        if label != NO_FINDING:
            assert float(items["Threshold Value"]["value"]) / 100 == pytest.approx(analysis.thresholds[label])
            decision = next(
                e["conceptValue"]["CodeMeaning"]
                for e in group["qualitativeEvaluations"]
                if e["conceptCode"]["CodeValue"] == codes.ABOVE_OPERATING_THRESHOLD.value
            )
            assert decision == ("Yes" if analysis.decisions[label] else "No")
    uids = [group["TrackingUniqueIdentifier"] for group in report["Measurements"]]
    assert len(uids) == len(set(uids)) == len(FINDINGS) + 1 + 2
    assert all(group["TrackingIdentifier"] for group in report["Measurements"])


def test_report_header_follows_ihe_air(outputs, source, tmp_path: Path) -> None:
    _, sr_paths, analyses = outputs
    report = read_tid1500(sr_paths["loose"], tmp_path / "sr.json")
    assert report["procedureReported"]["CodeValue"] == codes.PLAIN_CHEST_XRAY.value
    assert report["VerificationFlag"] == "UNVERIFIED" and report["CompletionFlag"] == "COMPLETE"
    observer = report["observerContext"]
    assert observer["ObserverType"] == "DEVICE"
    assert observer["DeviceObserverUID"] == analyses["loose"].classifier.device_uid
    assert report["imageLibrary"] == [source.SOPInstanceUID]


def test_contributing_equipment_names_both_models_with_their_device_uids(outputs) -> None:
    _, sr_paths, analyses = outputs
    ds = pydicom.dcmread(sr_paths["loose"])
    ours = [item for item in ds.ContributingEquipmentSequence if item.get("Manufacturer") == "cxr-node"]
    analysis = analyses["loose"]
    assert {item.DeviceUID for item in ours} == {analysis.segmenter.device_uid, analysis.classifier.device_uid}
    models = {model.device_uid: model for model in (analysis.segmenter, analysis.classifier)}
    for item in ours:
        model = models[item.DeviceUID]
        assert item.PurposeOfReferenceCodeSequence[0].CodeValue == codes.PROCESSING_EQUIPMENT.value
        assert item.ManufacturerModelName == model.name
        assert model.version in item.SoftwareVersions


def test_lung_areas_reference_their_segments_without_frame_numbers(outputs, source) -> None:
    seg, sr_paths, analyses = outputs
    ds = pydicom.dcmread(sr_paths["loose"])
    references = [item for item in _content_items(ds) if _name(item) == "Referenced Segmentation Frame"]
    assert len(references) == 2
    numbers = []
    for item in references:
        sop = item.ReferencedSOPSequence[0]
        assert sop.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert "ReferencedFrameNumber" not in sop
        numbers.append(int(sop.ReferencedSegmentNumber))
    assert numbers == [1, 2]
    areas = [item for item in _content_items(ds) if item.ValueType == "NUM" and _name(item) == "Area"]
    spacing = np.prod([float(v) for v in source.PixelSpacing])
    mask_areas = [analyses["loose"].segmentation.left.sum() * spacing, analyses["loose"].segmentation.right.sum() * spacing]
    got = [float(item.MeasuredValueSequence[0].NumericValue) for item in areas]
    assert got == pytest.approx(mask_areas, abs=1e-3)
    assert all(item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "mm2" for item in areas)


def test_findings_above_threshold_carry_an_ellipse_on_the_source_image(outputs, source) -> None:
    _, sr_paths, analyses = outputs
    analysis = analyses["loose"]
    ds = pydicom.dcmread(sr_paths["loose"])
    groups = [item for item in _content_items(ds) if _name(item) == "Measurement Group"]
    drawn = {}
    for group in groups:
        finding = next((i for i in group.ContentSequence if _name(i) == "Finding"), None)
        scoords = [i for i in group.ContentSequence if i.ValueType == "SCOORD"]
        if finding is not None and scoords:
            drawn[finding.ConceptCodeSequence[0].CodeValue] = scoords[0]
    positives = [label for label in FINDINGS if analysis.decisions[label]]
    assert positives, "the phantom has findings: the analysis must have positives"
    assert set(drawn) == {codes.FINDING_CODES[label].value for label in positives}
    for label in positives:
        scoord = drawn[codes.FINDING_CODES[label].value]
        assert scoord.GraphicType == "ELLIPSE"
        assert scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        expected = np.array(analysis.regions[label].ellipse_points(), dtype=np.float32).ravel()
        np.testing.assert_allclose(np.array(scoord.GraphicData, dtype=np.float32), expected, atol=1e-3)


def test_policy_and_demo_statement_are_stated(outputs) -> None:
    _, sr_paths, _ = outputs
    for policy, path in sr_paths.items():
        ds = pydicom.dcmread(path)
        texts = {(_name(i), i.TextValue) for i in _content_items(ds) if i.ValueType == "TEXT"}
        assert ("Lung mask policy", policy) in texts
        assert any(name == "Comment" and value.startswith(NOT_FOR_CLINICAL_USE) for name, value in texts)
        assert ds.SeriesDescription.startswith(NOT_FOR_CLINICAL_USE) and policy in ds.SeriesDescription


def test_clinical_models_get_no_demo_statement(source, phantom) -> None:
    analysis = make_analysis(phantom, clinical_use=True)
    seg = build_lung_segmentation(source, analysis)
    sr = build_measurement_report(source, seg, analysis)
    texts = [i.TextValue for i in _content_items(sr) if i.ValueType == "TEXT"]
    assert not any(NOT_FOR_CLINICAL_USE in text for text in texts)
    assert NOT_FOR_CLINICAL_USE not in sr.SeriesDescription


def test_one_seg_serves_every_policy_and_each_policy_gets_its_own_sr(outputs) -> None:
    seg, sr_paths, _ = outputs
    loose, tight = (pydicom.dcmread(sr_paths[p]) for p in ("loose", "tight"))
    assert loose.SOPInstanceUID != tight.SOPInstanceUID and loose.SeriesInstanceUID != tight.SeriesInstanceUID
    for ds in (loose, tight):
        evidence = {
            item.ReferencedSOPInstanceUID
            for study in ds.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for item in series.ReferencedSOPSequence
        }
        assert seg.SOPInstanceUID in evidence


def test_building_twice_gives_the_same_objects(source, phantom) -> None:
    analysis = make_analysis(phantom, seed=3)
    seg = build_lung_segmentation(source, analysis)
    one, two = (build_measurement_report(source, seg, analysis) for _ in range(2))
    assert one.SOPInstanceUID == two.SOPInstanceUID
    tracking = [[i.UID for i in _content_items(sr) if _name(i) == "Tracking Unique Identifier"] for sr in (one, two)]
    assert tracking[0] == tracking[1] and len(tracking[0]) == len(FINDINGS) + 3


def test_failed_segmentation_report_has_no_lungs_and_says_why(source, phantom, tmp_path: Path) -> None:
    analysis = make_analysis(phantom)
    failed = dataclasses.replace(analysis.segmentation, ok=False, failure_reason="right lung too small")
    analysis = dataclasses.replace(analysis, segmentation=failed)
    path = write_output(tmp_path, build_measurement_report(source, None, analysis))
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    names = [_name(i) for i in _content_items(ds)]
    assert "Referenced Segmentation Frame" not in names
    assert any(i.ValueType == "TEXT" and "right lung too small" in i.TextValue for i in _content_items(ds))


def test_missing_finding_is_refused_naming_it(source, phantom) -> None:
    analysis = make_analysis(phantom)
    probabilities = {k: v for k, v in analysis.probabilities.items() if k != "Edema"}
    with pytest.raises(ValueError, match="analysis.probabilities has no entry for 'Edema'"):
        build_measurement_report(source, None, dataclasses.replace(analysis, probabilities=probabilities))


def test_probability_outside_unit_interval_is_refused(source, phantom) -> None:
    analysis = make_analysis(phantom)
    seg = build_lung_segmentation(source, analysis)
    bad = dataclasses.replace(analysis, probabilities={**analysis.probabilities, "Mass": 1.5})
    with pytest.raises(ValueError, match=r"a probability must lie in \[0, 1\]; got 1.5"):
        build_measurement_report(source, seg, bad)


def test_source_without_orientation_or_imager_spacing_still_gives_valid_outputs(phantom, tmp_path: Path) -> None:
    ds = radiograph_dataset(phantom.image, RadiographIdentity.new(), modality="CR", sop_class_uid=CR_IMAGE)
    del ds.PatientOrientation
    assert "ImagerPixelSpacing" not in ds
    analysis = make_analysis(phantom)
    seg_path = write_output(tmp_path, build_lung_segmentation(ds, analysis))
    sr_path = write_output(tmp_path, build_measurement_report(ds, pydicom.dcmread(seg_path), analysis))
    assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(sr_path) == []
    assert "Image Library" not in [_name(i) for i in _content_items(pydicom.dcmread(sr_path))]
