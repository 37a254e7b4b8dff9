"""The lung DICOM Segmentation (BINARY) of one chest radiograph.

:func:`build_lung_segmentation` writes the segmenter's two masks as one highdicom
:class:`~highdicom.seg.Segmentation` of the source CR/DX image, in the source's study, in
a new series:

* segment 1 = left lung, segment 2 = right lung (``models.labels.LUNG_SIDES`` order), each
  Segmented Property Category *Anatomical Structure* (SCT 91723000), Type *Lung*
  (SCT 39607008) with a Type Modifier *Left*/*Right*, Anatomic Region *Chest* and Primary
  Anatomic Structure *Left lung* (SCT 44029006) / *Right lung* (SCT 3341006);
* Segment Algorithm Type AUTOMATIC, Algorithm Identification naming the segmenter, its
  version, family *Artificial Intelligence* and the weights' sha256;
* the segmenter in the Contributing Equipment Sequence (Processing Equipment) with its
  Device UID (IHE AI Results), manufacturer ``cxr-node``;
* Patient Orientation copied from the source (highdicom does not carry it over);
* JPEG 2000 lossless pixel data (highdicom refuses RLE for BINARY), encoded under
  :data:`node.outputs.codecs.JPEG2000_ENCODER_LOCK` (the encoder is not re-entrant);
* "NOT FOR CLINICAL USE" in Series Description, Content Description and Image Comments
  when the segmenter is not cleared for clinical use.

Projection radiographs have no Frame of Reference, which trips two readers; both
workarounds are applied:

* ``highdicom.seg.segread`` needs a Pixel Measures Sequence: one is always written, from the
  source's Pixel Spacing (or Imager Pixel Spacing) with a nominal Slice Thickness of 1 mm;
* OHIF needs Image Orientation (Patient) ``[1,0,0,0,1,0]`` in the shared Plane Orientation
  functional group to draw a 2D SEG; it is added there. The image plane of a projection
  radiograph has no patient-space orientation, so this is a convention for viewers, not a
  measurement; dciodvfy accepts it.

The SEG does not depend on the mask policy (the policy is applied after segmentation), so
one SEG serves all the SRs made under different policies from one image.
"""

from __future__ import annotations

import datetime as dt
import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless

from models.labels import LUNG_SIDES
from models.result import AnalysisResult, ModelVersionInfo
from node import __version__ as NODE_VERSION
from node.constants import NODE_MANUFACTURER
from node.faults import ImageFault
from node.outputs import codes
from node.outputs.codecs import JPEG2000_ENCODER_LOCK
from node.outputs.header import header_without_pixels, instance_number
from node.outputs.uids import OutputUIDs
from node.processing.pixels import pixel_spacing_mm

logger = logging.getLogger(__name__)

MANUFACTURER = NODE_MANUFACTURER
#: Series numbers of the node's output series (far above a modality's usual 1..100).
SEG_SERIES_NUMBER = 9001
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
#: Segment numbers in the SEG, by lung side.
SEGMENT_NUMBERS = {side: number for number, side in enumerate(LUNG_SIDES, start=1)}
_SEGMENT_LABELS = {"left": "Left lung", "right": "Right lung"}
_DISPLAY_COLORS = {"left": hd.color.CIELabColor(60.0, 60.0, 20.0), "right": hd.color.CIELabColor(60.0, -40.0, -40.0)}
_NOMINAL_SLICE_THICKNESS_MM = 1.0
_UNIT_PLANE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def demo_statement(model: ModelVersionInfo) -> str:
    """The plain statement outputs carry when ``model`` is not for clinical use."""
    return (
        f"{NOT_FOR_CLINICAL_USE}: produced by {model.label}, a demonstration/research model "
        "that is not cleared for clinical use. Do not base any diagnosis or treatment on it."
    )


def algorithm_identification(model: ModelVersionInfo, **parameters: str) -> hd.AlgorithmIdentificationSequence:
    """Algorithm Identification Sequence of ``model`` (name, version, AI family, sha256)."""
    return hd.AlgorithmIdentificationSequence(
        name=model.name,
        family=codes.ARTIFICIAL_INTELLIGENCE,
        version=model.version,
        source=MANUFACTURER,
        parameters={"architecture": model.architecture, "sha256": model.sha256, **parameters},
    )


def contributing_equipment(model: ModelVersionInfo) -> hd.ContributingEquipment:
    """A Contributing Equipment item for ``model`` with its Device UID (IHE AI Results)."""
    item = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.PROCESSING_EQUIPMENT,
        manufacturer_model_name=model.name[:64],
        software_versions=[model.version[:64], f"cxr-node {NODE_VERSION}"],
        device_serial_number=model.device_uid,
        contribution_description=f"{model.role} {model.label} ({model.architecture})"[:64],
    )
    item.DeviceUID = model.device_uid
    return item


def build_lung_segmentation(
    source_ds: Dataset,
    analysis: AnalysisResult,
    *,
    uids: OutputUIDs | None = None,
    created: dt.datetime | None = None,
) -> hd.seg.Segmentation:
    """Build the BINARY lung SEG of ``source_ds`` from ``analysis.segmentation``.

    Parameters
    ----------
    source_ds:
        The source CR/DX dataset (pixel data not needed; it is not copied). Its header is
        checked first (:func:`node.outputs.header.output_header`): invalid patient and study
        attributes are left out of the SEG.
    analysis:
        Its analysis; ``segmentation.left``/``right`` are ``(Rows, Columns) bool`` masks in
        source pixels and ``segmenter`` names the model.
    uids:
        Output UIDs; derived from the source and the models when omitted.
    created:
        Content/series date and time; now when omitted.

    Raises
    ------
    ValueError
        The segmentation failed (``ok`` is false: there are no lungs to write), or a mask
        does not match the source's Rows x Columns; :class:`node.faults.ImageFault` (a
        ``ValueError``) when an attribute the SEG is built on is missing or invalid.
    """
    segmentation = analysis.segmentation
    if not segmentation.ok:
        raise ImageFault(
            f"the segmentation failed ({segmentation.failure_reason}); write no SEG for this image "
            "and record the failure instead"
        )
    header = header_without_pixels(source_ds)  # checked: invalid patient/study attributes left out
    rows, columns = int(header.Rows), int(header.Columns)
    masks = []
    for side in LUNG_SIDES:
        mask = np.asarray(getattr(segmentation, side))
        if mask.shape != (rows, columns):
            raise ImageFault(
                f"{side} lung mask must match the source image's Rows x Columns ({rows} x {columns}); "
                f"got {' x '.join(map(str, mask.shape))}"
            )
        masks.append(mask.astype(bool))
    uids = uids or OutputUIDs.for_result(
        source_series_uid=str(header.SeriesInstanceUID),
        source_instance_uid=str(header.SOPInstanceUID),
        analysis=analysis,
    )
    created = created or dt.datetime.now()
    segmenter = analysis.segmenter
    algorithm = algorithm_identification(segmenter)

    descriptions = []
    for side in LUNG_SIDES:
        description = hd.seg.SegmentDescription(
            segment_number=SEGMENT_NUMBERS[side],
            segment_label=_SEGMENT_LABELS[side],
            segmented_property_category=codes.ANATOMICAL_STRUCTURE,
            segmented_property_type=codes.LUNG,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=uids.segment_tracking_uid(side),
            tracking_id=_SEGMENT_LABELS[side],
            anatomic_regions=[codes.CHEST],
            primary_anatomic_structures=[codes.LUNG_BY_SIDE[side]],
            display_color=_DISPLAY_COLORS[side],
        )
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept.from_code(codes.LATERALITY_BY_SIDE[side])
        ]
        descriptions.append(description)

    spacing, _ = pixel_spacing_mm(header)
    pixel_measures = hd.PixelMeasuresSequence(
        pixel_spacing=list(spacing) if spacing is not None else [1.0, 1.0],
        slice_thickness=_NOMINAL_SLICE_THICKNESS_MM,
    )

    clinical = segmenter.clinical_use
    series_description = "Lung segmentation" if clinical else f"{NOT_FOR_CLINICAL_USE} - Lung segmentation"
    content_description = f"Lungs by {segmenter.label}"
    if not clinical:
        content_description = f"{NOT_FOR_CLINICAL_USE}; {content_description}"
    pixel_array = np.stack(masks, axis=-1)[np.newaxis].astype(np.uint8)  # (1, rows, columns, 2)
    with JPEG2000_ENCODER_LOCK:  # highdicom encodes the frames here; the encoder is not re-entrant
        seg = hd.seg.Segmentation(
            source_images=[header],
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=uids.seg_series,
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=uids.seg_instance,
            instance_number=instance_number(header),
            manufacturer=MANUFACTURER,
            manufacturer_model_name=segmenter.name[:64],
            software_versions=[f"cxr-node {NODE_VERSION}", segmenter.version[:64]],  # type: ignore[arg-type]
            device_serial_number=segmenter.device_uid,
            content_description=content_description[:64],
            content_creator_name="cxr-node^",  # family-name-only PN
            content_label="LUNGS",
            transfer_syntax_uid=JPEG2000Lossless,
            pixel_measures=pixel_measures,
            omit_empty_frames=False,
            contributing_equipment=[contributing_equipment(segmenter)],
            series_description=series_description[:64],
            series_date=created.date(),
            series_time=created.time(),
            content_date=created.date(),
            content_time=created.time(),
        )
    if "PatientOrientation" in header:
        seg.PatientOrientation = header.PatientOrientation
    else:
        seg.PatientOrientation = ""  # Type 2C: present, empty when the source gave none
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PlaneOrientationSequence" not in shared:
        shared.PlaneOrientationSequence = hd.PlaneOrientationSequence(
            coordinate_system="PATIENT", image_orientation=_UNIT_PLANE
        )
    if not clinical:
        seg.ImageComments = demo_statement(segmenter)
    logger.info(
        "built SEG %s for source %s (segmenter %s)", uids.seg_instance, header.SOPInstanceUID, segmenter.label
    )
    return seg
