"""The findings of one radiograph as a Comprehensive 3D SR with a TID 1500 root.

:func:`build_measurement_report` fills TID 1500 *Imaging Measurement Report* the way the
IHE AI Results (AIR) profile asks, so PACS, OHIF and dcmqi's ``tid1500reader`` read it:

========================================  =====================================================
TID 1500 row                              content
========================================  =====================================================
Language (TID 1204)                       English (highdicom default)
Observation Context (TID 1001/1002/1004)  device observer = the classifier: its Device UID,
                                          name, manufacturer ``cxr-node``, model, version
Procedure Reported                        SCT 399208008 *Plain chest X-ray* (the examination,
                                          not the algorithm)
Image Library                             the source radiograph (left out when it lacks
                                          Patient Orientation or Imager Pixel Spacing)
Imaging Measurements, per finding         one group per label of ``models.labels.FINDINGS``:
                                          Tracking Identifier + Tracking Unique Identifier
                                          (deterministic), Finding = the SNOMED CT code
                                          (``codes.FINDING_CODES``), Algorithm Identification
                                          (TID 4019, with the mask policy as a parameter), NUM
                                          "<label> probability" in %, NUM Threshold Value in %,
                                          qualitative evaluation "At or above operating
                                          threshold" Yes/No. Findings above threshold are a
                                          TID 1410 planar ROI group whose Image Region is an
                                          SCOORD ELLIPSE on the source image (OHIF draws it and
                                          labels it "<label> probability: <value> %"); the
                                          others are TID 1501 groups referencing the image.
Imaging Measurements, No Finding          TID 1501 group, Finding DCM 111286 *No abnormality*,
                                          NUM "No Finding probability" in %
Imaging Measurements, per lung            TID 1410 group referencing its SEG segment, Finding
                                          *Left lung*/*Right lung*, NUM Area in mm² (in pixels
                                          when the spacing is unknown), Algorithm = segmenter
Qualitative Evaluations (row 12)          TEXT "Lung mask policy" = the policy; TEXT Comment
                                          "NOT FOR CLINICAL USE: ..." whenever a model is not
                                          for clinical use
========================================  =====================================================

Document attributes: Completion COMPLETE, Verification UNVERIFIED (nobody signed it),
Preliminary FINAL; Contributing Equipment Sequence with one *Processing Equipment* item per
model, each with manufacturer, model name, software versions and the model version's Device
UID (IHE AIR); Series Description names the policy and starts with "NOT FOR CLINICAL USE"
for demo models; the private coding scheme is declared.

Segment references: a Referenced Segmentation Frame that carries both a Referenced Frame
Number and a Referenced Segment Number is an error for ``dciodvfy`` (PS3.3 C.18.4.1: the
frame number is required only when the segment number is absent), so the reference names
the segment alone; each segment of the lung SEG is exactly one frame.

One SR per policy: the SEG holds the raw lungs and is shared by the SRs of all policies of
one image (their UIDs differ by policy; the SEG's do not).
"""

from __future__ import annotations

import datetime as dt
import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from models.labels import FINDINGS, LUNG_SIDES, NO_FINDING
from models.result import AnalysisResult, ModelVersionInfo
from node.outputs import codes
from node.faults import ImageFault
from node.outputs.header import header_without_pixels, instance_number
from node.outputs.seg import (
    MANUFACTURER,
    NOT_FOR_CLINICAL_USE,
    SEGMENT_NUMBERS,
    contributing_equipment,
    demo_statement,
)
from node.outputs.uids import OutputUIDs
from node.processing.pixels import pixel_spacing_mm

logger = logging.getLogger(__name__)

#: Series number of the SR series of each policy (the SEG is 9001).
SR_SERIES_NUMBERS = {"original": 9101, "loose": 9102, "tight": 9103}
_OTHER_POLICY_SERIES_NUMBER = 9199
_DS_DECIMALS = 6  # probabilities in % keep 6 decimals: far below any model's resolution


def _percent(probability: float) -> float:
    if not 0.0 <= probability <= 1.0 or np.isnan(probability):
        raise ImageFault(f"a probability must lie in [0, 1]; got {probability}")
    return round(float(probability) * 100.0, _DS_DECIMALS)


def _algorithm(model: ModelVersionInfo, **parameters: str) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[f"{key}={value}" for key, value in parameters.items()] or None,
        family=codes.ARTIFICIAL_INTELLIGENCE,
        manufacturer=MANUFACTURER,
    )


def _tracking(uids: OutputUIDs, name: str, policy: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=uids.group_tracking_uid(name), identifier=f"{name} ({policy})")


def _finding_group(
    label: str,
    analysis: AnalysisResult,
    source_ds: Dataset,
    uids: OutputUIDs,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations:
    probability = analysis.probabilities[label]
    threshold = analysis.thresholds[label]
    above = bool(analysis.decisions[label])
    measurements = [
        hd.sr.Measurement(name=codes.PROBABILITY_CODES[label], value=_percent(probability), unit=codes.PERCENT),
        hd.sr.Measurement(name=codes.THRESHOLD_VALUE, value=_percent(threshold), unit=codes.PERCENT),
    ]
    evaluations = [
        hd.sr.QualitativeEvaluation(name=codes.ABOVE_OPERATING_THRESHOLD, value=codes.YES if above else codes.NO)
    ]
    common = dict(
        tracking_identifier=_tracking(uids, label, analysis.policy),
        finding_type=codes.FINDING_CODES[label],
        algorithm_id=_algorithm(analysis.classifier, mask_policy=analysis.policy),
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )
    region = analysis.regions.get(label)
    if above and region is not None:
        points = np.asarray(region.ellipse_points(), dtype=np.float32)
        rows, columns = int(source_ds.Rows), int(source_ds.Columns)
        points[:, 0] = np.clip(points[:, 0], 0, columns)
        points[:, 1] = np.clip(points[:, 1], 0, rows)
        image_region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.ELLIPSE,
            graphic_data=points,
            source_image=hd.sr.SourceImageForRegion.from_source_image(source_ds),
        )
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_region=image_region, **common)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source_ds)], **common
    )


def _no_finding_group(analysis: AnalysisResult, source_ds: Dataset, uids: OutputUIDs) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(uids, NO_FINDING, analysis.policy),
        finding_type=codes.FINDING_CODES[NO_FINDING],
        algorithm_id=_algorithm(analysis.classifier, mask_policy=analysis.policy),
        measurements=[
            hd.sr.Measurement(
                name=codes.PROBABILITY_CODES[NO_FINDING], value=_percent(analysis.no_finding), unit=codes.PERCENT
            )
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source_ds)],
    )


def _segment_reference(seg: Dataset, side: str, source_ds: Dataset) -> hd.sr.ReferencedSegmentationFrame:
    number = SEGMENT_NUMBERS[side]
    reference = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        frame_number=_frame_of_segment(seg, number),
        segment_number=number,
        source_image=hd.sr.SourceImageForSegmentation.from_source_image(source_ds),
    )
    # The segment alone names the region (see the module docstring): drop the frame number.
    del reference[0].ReferencedSOPSequence[0].ReferencedFrameNumber
    return reference


def _frame_of_segment(seg: Dataset, segment_number: int) -> int:
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        if int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == segment_number:
            return index
    raise ImageFault(f"the SEG {seg.SOPInstanceUID} has no frame for segment {segment_number}")


def _lung_group(
    side: str,
    analysis: AnalysisResult,
    seg: Dataset,
    source_ds: Dataset,
    uids: OutputUIDs,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    spacing, _ = pixel_spacing_mm(source_ds)
    mask = np.asarray(getattr(analysis.segmentation, side), dtype=bool)
    if spacing is not None:
        area, unit = float(mask.sum()) * spacing[0] * spacing[1], codes.SQUARE_MILLIMETER
    else:
        area, unit = float(mask.sum()), codes.SQUARE_PIXEL
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.group_tracking_uid(f"{side} lung"), identifier=f"{side.capitalize()} lung"
        ),
        referenced_segment=_segment_reference(seg, side, source_ds),
        finding_type=codes.LUNG_BY_SIDE[side],
        algorithm_id=_algorithm(analysis.segmenter),
        measurements=[hd.sr.Measurement(name=codes.AREA, value=round(area, 3), unit=unit)],
    )


def _qualitative_evaluations(analysis: AnalysisResult) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    items = [
        hd.sr.TextContentItem(
            name=codes.LUNG_MASK_POLICY,
            value=analysis.policy,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    ]
    if not analysis.segmentation.ok:
        items.append(
            hd.sr.TextContentItem(
                name=codes.COMMENT,
                value=f"Lung segmentation failed: {analysis.segmentation.failure_reason}",
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    for model in _demo_models(analysis):
        items.append(
            hd.sr.TextContentItem(
                name=codes.COMMENT, value=demo_statement(model), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
        )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _library_describable(source: Dataset) -> bool:
    """Whether highdicom can write the source's Image Library entry (TID 1601/1603).

    The projection radiography descriptors need Patient Orientation (row and column) and
    Imager Pixel Spacing; without them the (optional) Image Library is left out rather
    than filled with invented values.
    """
    orientation = source.get("PatientOrientation") or []
    return len(orientation) == 2 and all(str(v).strip() for v in orientation) and bool(source.get("ImagerPixelSpacing"))


def _demo_models(analysis: AnalysisResult) -> list[ModelVersionInfo]:
    return [model for model in (analysis.segmenter, analysis.classifier) if not model.clinical_use]


def build_measurement_report(
    source_ds: Dataset,
    seg: Dataset | None,
    analysis: AnalysisResult,
    *,
    uids: OutputUIDs | None = None,
    created: dt.datetime | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 report of ``analysis`` on ``source_ds`` (rows in the module docstring).

    Parameters
    ----------
    source_ds:
        The source CR/DX dataset (pixel data not needed). Its header is checked first
        (:func:`node.outputs.header.output_header`): invalid patient and study attributes are
        left out of the report.
    seg:
        The lung SEG built from the same analysis by
        :func:`node.outputs.seg.build_lung_segmentation`, or ``None`` when the segmentation
        failed (then the report has no lung groups and says why).
    analysis:
        The result under one mask policy; one report per policy.
    uids:
        Output UIDs; derived from the source, the models and the policy when omitted.
    created:
        Content/series date and time; now when omitted.

    Raises
    ------
    ValueError
        A finding of ``models.labels.FINDINGS`` is missing from the probabilities,
        thresholds or decisions, a probability is outside [0, 1], ``seg`` does not
        reference ``source_ds``, or an attribute the report is built on is missing or invalid
        (all :class:`node.faults.ImageFault`).
    """
    for label in FINDINGS:
        for what, mapping in (
            ("probabilities", analysis.probabilities),
            ("thresholds", analysis.thresholds),
            ("decisions", analysis.decisions),
        ):
            if label not in mapping:
                raise ImageFault(f"analysis.{what} has no entry for {label!r}; every finding needs one")
    if seg is None and analysis.segmentation.ok:
        raise ImageFault("the segmentation succeeded, so the report needs its SEG to reference the lungs")
    header = header_without_pixels(source_ds)  # checked: invalid patient/study attributes left out
    if seg is not None:
        referenced = {
            str(item.ReferencedSOPInstanceUID)
            for series in seg.get("ReferencedSeriesSequence", [])
            for item in series.ReferencedInstanceSequence
        }
        if str(header.SOPInstanceUID) not in referenced:
            raise ImageFault(f"the SEG {seg.SOPInstanceUID} does not reference source {header.SOPInstanceUID}")
    uids = uids or OutputUIDs.for_result(
        source_series_uid=str(header.SeriesInstanceUID),
        source_instance_uid=str(header.SOPInstanceUID),
        analysis=analysis,
    )
    created = created or dt.datetime.now()
    source_header = header

    groups: list = [_finding_group(label, analysis, source_header, uids) for label in FINDINGS]
    groups.append(_no_finding_group(analysis, source_header, uids))
    if seg is not None:
        groups.extend(_lung_group(side, analysis, seg, source_header, uids) for side in LUNG_SIDES)

    classifier = analysis.classifier
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept.from_code(codes.DEVICE_OBSERVER),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=classifier.device_uid,
            name=classifier.label[:64],
            manufacturer_name=MANUFACTURER,
            model_name=classifier.name[:64],
            serial_number=classifier.version[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PLAIN_CHEST_XRAY,
        imaging_measurements=groups,
        referenced_images=[source_header] if _library_describable(source_header) else None,
    )
    report[0].ContentSequence.append(_qualitative_evaluations(analysis))

    demo = bool(_demo_models(analysis))
    series_description = f"AI chest findings ({analysis.policy} lung mask)"
    if demo:
        series_description = f"{NOT_FOR_CLINICAL_USE} - {series_description}"
    evidence = [source_header] + ([seg] if seg is not None else [])
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBERS.get(analysis.policy, _OTHER_POLICY_SERIES_NUMBER),
        sop_instance_uid=uids.sr_instance,
        instance_number=instance_number(header),
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=True,
        is_verified=False,
        contributing_equipment=[contributing_equipment(analysis.segmenter), contributing_equipment(classifier)],
        series_description=series_description[:64],
        coding_schemes=codes.private_coding_scheme(),
        series_date=created.date(),
        series_time=created.time(),
        content_date=created.date(),
        content_time=created.time(),
    )
    logger.info(
        "built SR %s for source %s (policy %s, classifier %s)",
        uids.sr_instance,
        header.SOPInstanceUID,
        analysis.policy,
        classifier.label,
    )
    return sr
