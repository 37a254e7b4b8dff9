"""Write synthetic radiographs as DICOM Digital X-Ray (or CR) instances.

Used by the phantom generator, the demo and the tests, so that everything the node is fed
in a test looks like what a modality sends: DX for Presentation, MONOCHROME2, 16-bit
storage, PixelSpacing and ViewPosition set, Patient Orientation ``L\\F`` for a PA view.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

_ANATOMIC_REGION = {
    "CHEST": ("43799004", "SCT", "Chest"),
    "ABDOMEN": ("818983003", "SCT", "Abdomen"),
    "HAND": ("85562004", "SCT", "Hand"),
    "SKULL": ("89546000", "SCT", "Skull"),
}

#: Patient Orientation (row direction, column direction) for each view, image in standard display.
_ORIENTATION = {"PA": ["L", "F"], "AP": ["R", "F"], "LL": ["A", "F"], "RL": ["P", "F"], "LATERAL": ["A", "F"]}


@dataclass(frozen=True)
class RadiographIdentity:
    """UIDs and (synthetic) patient identity of one instance."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    patient_id: str = "PHANTOM-0001"
    patient_name: str = "Phantom^Chest"
    accession_number: str = "PH0001"

    @classmethod
    def new(cls, study_instance_uid: str | None = None, **kwargs: str) -> "RadiographIdentity":
        """Fresh UIDs, optionally inside an existing study."""
        return cls(
            study_instance_uid=study_instance_uid or generate_uid(),
            series_instance_uid=kwargs.pop("series_instance_uid", None) or generate_uid(),
            sop_instance_uid=kwargs.pop("sop_instance_uid", None) or generate_uid(),
            **kwargs,
        )


def radiograph_dataset(
    pixels: np.ndarray,
    identity: RadiographIdentity,
    *,
    pixel_spacing_mm: tuple[float, float] | None = (0.143, 0.143),
    view_position: str = "PA",
    body_part: str = "CHEST",
    modality: str = "DX",
    sop_class_uid: str = DX_FOR_PRESENTATION,
    photometric_interpretation: str = "MONOCHROME2",
    bits_stored: int = 12,
) -> Dataset:
    """Build a DX/CR/SC dataset from a radiograph.

    Parameters
    ----------
    pixels:
        ``(H, W)`` array. Floats in [0, 1] are scaled to ``bits_stored``; integers are stored
        as they are (they must fit ``bits_stored``). Bright = dense (bone), as displayed.
    identity:
        Study, series and instance UIDs plus synthetic patient attributes.
    photometric_interpretation:
        ``MONOCHROME2`` stores the values as given; ``MONOCHROME1`` stores them inverted, so
        the displayed image is the same.
    """
    if pixels.ndim != 2:
        raise ValueError(f"a radiograph is a 2-D (H, W) array; got shape {pixels.shape}")
    max_value = (1 << bits_stored) - 1
    if np.issubdtype(pixels.dtype, np.floating):
        stored = np.clip(np.rint(pixels * max_value), 0, max_value).astype(np.uint16)
    else:
        if pixels.min() < 0 or pixels.max() > max_value:
            raise ValueError(f"integer pixels must lie in 0..{max_value} for bits_stored={bits_stored}")
        stored = pixels.astype(np.uint16)
    if photometric_interpretation == "MONOCHROME1":
        stored = (max_value - stored).astype(np.uint16)
    elif photometric_interpretation != "MONOCHROME2":
        raise ValueError("photometric_interpretation must be MONOCHROME1 or MONOCHROME2")

    now = dt.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = identity.sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = identity.sop_instance_uid
    ds.StudyInstanceUID = identity.study_instance_uid
    ds.SeriesInstanceUID = identity.series_instance_uid
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.AccessionNumber = identity.accession_number
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyDescription = "XR CHEST"
    ds.SeriesDescription = f"CHEST {view_position}"
    ds.Modality = modality
    ds.Manufacturer = "cxr-node phantom generator"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = body_part
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = _ANATOMIC_REGION.get(
        body_part, ("43799004", "SCT", "Chest")
    )
    ds.AnatomicRegionSequence = [region]
    ds.ViewPosition = view_position
    ds.PatientOrientation = _ORIENTATION.get(view_position, ["L", "F"])
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric_interpretation
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if pixel_spacing_mm is not None:
        if modality == "DX":
            ds.ImagerPixelSpacing = [f"{v:.6g}" for v in pixel_spacing_mm]
        ds.PixelSpacing = [f"{v:.6g}" for v in pixel_spacing_mm]
    if sop_class_uid in (DX_FOR_PRESENTATION, DX_FOR_PROCESSING):
        ds.PresentationIntentType = "FOR PRESENTATION" if sop_class_uid == DX_FOR_PRESENTATION else "FOR PROCESSING"
        ds.ImageLaterality = "U"
        ds.DetectorType = "DIRECT"
        ds.BurnedInAnnotation = "NO"
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
        ds.WindowCenter = (max_value + 1) // 2
        ds.WindowWidth = max_value + 1
        ds.PixelIntensityRelationship = "LIN"
        ds.PixelIntensityRelationshipSign = 1 if photometric_interpretation == "MONOCHROME2" else -1
        ds.PresentationLUTShape = "IDENTITY" if photometric_interpretation == "MONOCHROME2" else "INVERSE"
        ds.LossyImageCompression = "00"
        ds.PositionerType = ""
        ds.AcquisitionContextSequence = []
    if sop_class_uid == SECONDARY_CAPTURE:
        ds.ConversionType = "WSD"
    ds.PixelData = stored.tobytes()
    return ds


def write_radiograph(path: Path, pixels: np.ndarray, identity: RadiographIdentity, **kwargs: object) -> Path:
    """Write :func:`radiograph_dataset` to ``path`` as a DICOM Part 10 file; return the path."""
    ds = radiograph_dataset(pixels, identity, **kwargs)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
