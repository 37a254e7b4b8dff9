"""Turn a radiograph's DICOM pixel data into the models' input image.

The models take an ``(H, W) float32`` image in ``[0, 1]`` as it would be displayed (bright =
dense: bone white, air black), plus the pixel spacing in millimetres. This module walks the
DICOM grayscale pipeline (PS3.4 N.2, "Grayscale Transformations") with pydicom's own
implementations, so every encoding the listener accepts ends up the same:

1. **Stored values** (``Dataset.pixel_array``): any Bits Allocated/Stored, signed or
   unsigned, any transfer syntax with a decoder installed.
2. **Modality LUT** (:func:`pydicom.pixels.apply_modality_lut`): Rescale Slope/Intercept or
   a Modality LUT Sequence.
3. **VOI LUT** (:func:`pydicom.pixels.apply_voi_lut`, first transform): a VOI LUT Sequence
   if present, else Window Center/Width with VOI LUT Function ``LINEAR``, ``LINEAR_EXACT``
   or ``SIGMOID``. The result is scaled to ``[0, 1]`` by the VOI output range (the LUT's
   bit depth; for a window the output range pydicom maps onto). Without any VOI, the
   modality values are scaled by their own minimum and maximum.
4. **Polarity**: MONOCHROME1 (minimum = white) and Presentation LUT Shape ``INVERSE`` each
   mean "display inverted"; the image is inverted once if either is present, never twice
   (a DX MONOCHROME1 image must carry ``INVERSE``, PS3.3 C.8.11.7, and that names the same
   inversion, not a second one).

Colour secondary captures (RGB, YBR) are reduced to luma (ITU-R BT.601 weights) after
pydicom's colour conversion; PALETTE COLOR and multi-frame images are refused.

Pixel spacing (row, column) in mm, in order of preference:

* Pixel Spacing (0028,0030): spacing in the patient as calibrated by the modality;
* Imager Pixel Spacing (0018,1164) divided by Estimated Radiographic Magnification Factor
  (0018,1114) when that is present (PS3.3 C.8.11.4.1.1: the detector spacing corrected to
  the patient plane);
* Imager Pixel Spacing alone (at the detector, so anatomy measures ~10 % larger);
* else ``None``: the models then use their documented fallback.

A spacing (or magnification) that is not two (one) positive finite numbers counts as absent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from node.faults import ImageFault

logger = logging.getLogger(__name__)

_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)


@dataclass(frozen=True)
class ModelInput:
    """One radiograph ready for :func:`models.analyze`.

    Attributes
    ----------
    image:
        ``(H, W) float32`` in ``[0, 1]``, display orientation and polarity (dense = bright),
        indexed ``[row, column]`` like the source's pixel data.
    pixel_spacing_mm:
        ``(row spacing, column spacing)`` in mm, or ``None`` when the header gives none.
    view_position:
        ``"PA"``, ``"AP"``, another View Position value, or ``None`` when absent.
    notes:
        What was applied, in order, for the record (no patient data).
    """

    image: np.ndarray
    pixel_spacing_mm: tuple[float, float] | None
    view_position: str | None
    notes: tuple[str, ...] = field(default_factory=tuple)


def pixel_spacing_mm(ds: Dataset) -> tuple[tuple[float, float] | None, str]:
    """Return ``((row_mm, col_mm) or None, how it was found)`` following the module's rules."""
    spacing = _pair(ds, "PixelSpacing")
    if spacing is not None:
        return spacing, "PixelSpacing"
    imager = _pair(ds, "ImagerPixelSpacing")
    if imager is None:
        return None, "no valid pixel spacing in the header"
    factor = _positive(ds, "EstimatedRadiographicMagnificationFactor")
    if factor is not None:
        return (imager[0] / factor, imager[1] / factor), f"ImagerPixelSpacing / magnification {factor:g}"
    return imager, "ImagerPixelSpacing (detector plane, not corrected for magnification)"


def _pair(ds: Dataset, keyword: str) -> tuple[float, float] | None:
    """Two positive finite numbers from ``keyword``; None when absent or not valid (then unused)."""
    try:
        value = ds.get(keyword)
        if value is None or isinstance(value, (str, bytes)) or len(value) != 2:
            return None
        row, col = float(value[0]), float(value[1])
    except (TypeError, ValueError, OverflowError):
        return None
    if not (0 < row < float("inf") and 0 < col < float("inf")):
        return None
    return row, col


def _positive(ds: Dataset, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        number = float(value) if value not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is not None and 0 < number < float("inf") else None


def model_input(ds: Dataset) -> ModelInput:
    """Convert a CR/DX/SC dataset into the models' input.

    Parameters
    ----------
    ds:
        A dataset with Pixel Data (any transfer syntax pydicom can decode here).

    Returns
    -------
    ModelInput
        ``image`` is ``(Rows, Columns) float32`` in ``[0, 1]`` as displayed.

    Raises
    ------
    ValueError
        No pixel data, more than one frame, or a photometric interpretation the models
        cannot take (the message names it).
    """
    if "PixelData" not in ds:
        raise ImageFault("the instance has no Pixel Data; nothing to analyse")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageFault(f"the instance has {frames} frames; the models take single-frame radiographs")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    notes: list[str] = []

    stored = ds.pixel_array
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        image = _grayscale(ds, stored, photometric, notes)
    elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"):
        image = _luma(ds, stored, notes)
    else:
        raise ImageFault(
            f"photometric interpretation {photometric or '(missing)'} is not supported; "
            "send MONOCHROME1, MONOCHROME2 or RGB"
        )

    spacing, spacing_source = pixel_spacing_mm(ds)
    notes.append(f"pixel spacing from {spacing_source}")
    view = str(ds.get("ViewPosition", "") or "").strip().upper() or None
    image = np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)
    return ModelInput(image=image, pixel_spacing_mm=spacing, view_position=view, notes=tuple(notes))


def _grayscale(ds: Dataset, stored: np.ndarray, photometric: str, notes: list[str]) -> np.ndarray:
    values = apply_modality_lut(stored, ds).astype(np.float64, copy=False)
    if "ModalityLUTSequence" in ds:
        notes.append("Modality LUT Sequence applied")
    elif "RescaleSlope" in ds or "RescaleIntercept" in ds:
        notes.append(f"rescale slope {ds.get('RescaleSlope', 1)} intercept {ds.get('RescaleIntercept', 0)} applied")

    if "VOILUTSequence" in ds:
        lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        # A LUT is indexed by integer input values; an identity rescale leaves floats behind.
        lut_input = np.rint(values).astype(np.int64) if np.array_equal(values, np.rint(values)) else values
        out = apply_voi_lut(lut_input, ds, index=0, prefer_lut=True).astype(np.float64)
        image = out / float((1 << lut_bits) - 1)
        notes.append(f"VOI LUT Sequence applied ({lut_bits}-bit output)")
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        low, high = _window_output_range(ds, values)
        out = apply_voi_lut(values, ds, index=0, prefer_lut=False).astype(np.float64)
        image = (out - low) / (high - low)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        notes.append(f"window {_first(ds.WindowCenter):g}/{_first(ds.WindowWidth):g} {function} applied")
    else:
        low, high = float(values.min()), float(values.max())
        image = (values - low) / (high - low) if high > low else np.zeros_like(values)
        notes.append("no VOI in the header: scaled by the image's minimum and maximum")

    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        image = 1.0 - image
        reasons = [r for r, present in (("MONOCHROME1", photometric == "MONOCHROME1"), ("Presentation LUT Shape INVERSE", shape == "INVERSE")) if present]
        notes.append("inverted for display (" + " and ".join(reasons) + ")")
    return image


def _first(value: object) -> float:
    """First value of a possibly multi-valued DS element."""
    try:
        return float(value[0])  # type: ignore[index]
    except TypeError:
        return float(value)  # type: ignore[arg-type]


def _window_output_range(ds: Dataset, values: np.ndarray) -> tuple[float, float]:
    """The ``(y_min, y_max)`` that :func:`pydicom.pixels.apply_windowing` maps a window onto.

    pydicom maps the window onto the range of the modality-LUT output of the stored bits
    (unsigned or signed, then rescaled when Rescale Slope/Intercept are present). With a
    negative slope ``y_min > y_max``; dividing by ``y_max - y_min`` still maps the window's
    low end to 0.
    """
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        y_min, y_max = 0.0, float((1 << bits) - 1)
    else:
        y_min, y_max = float(-(1 << (bits - 1))), float((1 << (bits - 1)) - 1)
    if "ModalityLUTSequence" in ds:
        lut_bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        y_min, y_max = 0.0, float((1 << lut_bits) - 1)
    elif "RescaleSlope" in ds and "RescaleIntercept" in ds:  # pydicom rescales only with both
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        y_min, y_max = y_min * slope + intercept, y_max * slope + intercept
    if y_max == y_min:
        raise ImageFault(f"cannot derive the window's output range from BitsStored={bits} and the rescale")
    return y_min, y_max


def _luma(ds: Dataset, stored: np.ndarray, notes: list[str]) -> np.ndarray:
    if stored.ndim != 3 or stored.shape[-1] != 3:
        raise ImageFault(f"a colour image needs (H, W, 3) pixels; got shape {stored.shape}")
    max_value = float((1 << int(ds.BitsStored)) - 1)
    notes.append("colour image reduced to luma (BT.601 weights)")
    return (stored.astype(np.float64) @ _LUMA_WEIGHTS) / max_value
