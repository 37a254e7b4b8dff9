"""Plausibility checks on a pair of lung masks: a failure is reported, bad masks are not passed on.

Each check has a name that appears in the failure reason, so that logs and the database say
which rule a segmentation broke:

``quality``      the decoder's predicted IoU of each lung is at least :data:`MIN_PREDICTED_IOU`
``area``         each lung covers :data:`LUNG_AREA_FRACTION` of the image (a fraction range)
``position``     at least :data:`MIN_FRACTION_IN_OWN_HALF` of each lung lies in its own image half
                 (patient's right lung in the image's left half, display orientation)
``components``   each lung's largest connected component holds at least
                 :data:`MIN_LARGEST_COMPONENT_FRACTION` of its pixels
``overlap``      the lungs share at most :data:`MAX_OVERLAP_FRACTION` of the smaller lung
``balance``      the larger lung is at most :data:`MAX_AREA_RATIO` times the smaller one
``contrast``     (when the image is given) each lung is darker than a band just outside it by at
                 least :data:`MIN_LUNG_CONTRAST` of the image's 1st-99th percentile range: aerated
                 lung is radiolucent (display orientation, bright = dense). This catches masks a
                 network draws on a blank or non-chest image with confidence.

The ranges are generous for adult PA/AP chest radiographs; they catch empty, exploded, swapped,
fragmented and merged masks rather than grade a good one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

MIN_PREDICTED_IOU = 0.5
LUNG_AREA_FRACTION = (0.02, 0.40)
MIN_FRACTION_IN_OWN_HALF = 0.85
MIN_LARGEST_COMPONENT_FRACTION = 0.90
MAX_OVERLAP_FRACTION = 0.05
MAX_AREA_RATIO = 4.0
MIN_LUNG_CONTRAST = 0.03
#: Width of the band outside each lung, as a fraction of the image side.
CONTRAST_BAND_FRACTION = 0.03
#: The contrast check works on a copy reduced to at most this many pixels per side.
CONTRAST_GRID = 256


@dataclass(frozen=True)
class PlausibilityVerdict:
    """Outcome of :func:`check_lung_masks`: ``ok``, or the first failed check and why."""

    ok: bool
    check: str | None = None
    reason: str | None = None


def _largest_component_fraction(mask: np.ndarray) -> float:
    step = max(1, -(-max(mask.shape) // CONTRAST_GRID))  # ceil division; counts on a reduced copy
    labels, count = ndimage.label(mask[::step, ::step])
    if count <= 1:
        return 1.0
    sizes = np.bincount(labels.ravel())[1:]
    return float(sizes.max() / sizes.sum())


def lung_contrast(image: np.ndarray, lung: np.ndarray, other: np.ndarray) -> float:
    """How much darker a lung is than a band just outside it.

    Parameters
    ----------
    image:
        ``(H, W)`` grey image, display orientation (bright = dense).
    lung, other:
        ``(H, W)`` bool masks of this lung and the other one (excluded from the band).

    Returns
    -------
    float
        ``(mean(band) - mean(lung)) / (p99 - p1)`` of the image; 0 for a flat image.
    """
    step = max(1, int(np.ceil(max(image.shape) / CONTRAST_GRID)))
    small = np.asarray(image, dtype=np.float64)[::step, ::step]
    lung_small = lung[::step, ::step]
    other_small = other[::step, ::step]
    low, high = np.percentile(small, [1, 99])
    if high - low <= 0 or not lung_small.any():
        return 0.0
    width = CONTRAST_BAND_FRACTION * max(small.shape)
    band = (ndimage.distance_transform_edt(~lung_small) <= width) & ~lung_small & ~other_small
    if not band.any():
        return 0.0
    return float((small[band].mean() - small[lung_small].mean()) / (high - low))


def check_lung_masks(
    left: np.ndarray, right: np.ndarray, quality: dict[str, float], image: np.ndarray | None = None
) -> PlausibilityVerdict:
    """Check a left/right lung mask pair for plausibility.

    Parameters
    ----------
    left, right:
        ``(H, W)`` bool masks of the patient's left and right lung, display orientation.
    quality:
        ``{"left": q, "right": q}`` predicted IoU of each mask.
    image:
        The ``(H, W)`` radiograph the masks belong to; enables the ``contrast`` check.

    Returns
    -------
    PlausibilityVerdict
        ``ok=True``, or ``ok=False`` with the name of the first failed check and a reason.
    """
    if left.shape != right.shape or left.ndim != 2:
        raise ValueError(f"left and right masks must be (H, W) of one shape; got {left.shape} and {right.shape}")
    height, width = left.shape
    total = float(height * width)
    masks = {"left": left.astype(bool), "right": right.astype(bool)}
    areas = {side: float(m.sum()) for side, m in masks.items()}

    for side in ("left", "right"):
        if quality[side] < MIN_PREDICTED_IOU:
            return PlausibilityVerdict(
                False, "quality", f"{side} lung: predicted IoU {quality[side]:.2f} is below {MIN_PREDICTED_IOU:.2f}"
            )
    low, high = LUNG_AREA_FRACTION
    for side in ("left", "right"):
        fraction = areas[side] / total
        if not low <= fraction <= high:
            return PlausibilityVerdict(
                False,
                "area",
                f"{side} lung covers {fraction:.1%} of the image, outside the plausible {low:.0%}-{high:.0%}",
            )
    mid = width // 2
    own_half = {"left": masks["left"][:, mid:], "right": masks["right"][:, :mid]}
    for side in ("left", "right"):
        inside = float(own_half[side].sum()) / areas[side]
        if inside < MIN_FRACTION_IN_OWN_HALF:
            half = "right" if side == "left" else "left"
            return PlausibilityVerdict(
                False,
                "position",
                f"only {inside:.0%} of the {side} lung lies in the image's {half} half "
                f"(at least {MIN_FRACTION_IN_OWN_HALF:.0%} expected in display orientation)",
            )
    for side in ("left", "right"):
        fraction = _largest_component_fraction(masks[side])
        if fraction < MIN_LARGEST_COMPONENT_FRACTION:
            return PlausibilityVerdict(
                False,
                "components",
                f"{side} lung is fragmented: its largest connected part holds {fraction:.0%} of it "
                f"(at least {MIN_LARGEST_COMPONENT_FRACTION:.0%} expected)",
            )
    overlap = float((masks["left"] & masks["right"]).sum()) / min(areas.values())
    if overlap > MAX_OVERLAP_FRACTION:
        return PlausibilityVerdict(
            False, "overlap", f"left and right lung masks overlap by {overlap:.0%} of the smaller lung"
        )
    ratio = max(areas.values()) / min(areas.values())
    if ratio > MAX_AREA_RATIO:
        return PlausibilityVerdict(
            False, "balance", f"one lung is {ratio:.1f} times the other's area (at most {MAX_AREA_RATIO:.0f} expected)"
        )
    if image is not None:
        if np.shape(image) != left.shape:
            raise ValueError(f"image {np.shape(image)} and masks {left.shape} must have one shape")
        for side, other in (("left", "right"), ("right", "left")):
            contrast = lung_contrast(image, masks[side], masks[other])
            if contrast < MIN_LUNG_CONTRAST:
                return PlausibilityVerdict(
                    False,
                    "contrast",
                    f"{side} lung is not darker than its surroundings (contrast {contrast:.2f}, at least "
                    f"{MIN_LUNG_CONTRAST:.2f} expected): no aerated lung where the mask is",
                )
    return PlausibilityVerdict(True)
