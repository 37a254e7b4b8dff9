"""Lung-mask policies: which part of a radiograph the classifier is allowed to see.

Three policies, one node setting (``CXR_NODE_MASK_POLICY``), recorded with every result:

``original``
    No mask: the classifier sees the whole radiograph.
``loose``
    Both lungs, closed across the mediastinum and hila (the convex hull of the union of the
    two lung masks), grown outward by :data:`LOOSE_MARGIN_MM` millimetres. Keeps the perihilar
    and peripheral context (hila, mediastinal contours, pleura, costophrenic angles).
``tight``
    Each lung exactly as segmented, eroded by :data:`TIGHT_EROSION_MM` millimetres (0 by
    default); nothing between the lungs and nothing outside them.

Pixels outside the policy's mask are set to :data:`FILL_VALUE` (0.0, black). Margins are given
in millimetres and converted to pixels per axis from the pixel spacing (row spacing, column
spacing), so anisotropic pixels get an elliptical margin that is round in millimetres. The
margins are applied with a Euclidean distance transform, exact and linear in the image size.

When the pixel spacing is unknown, :func:`fallback_pixel_spacing` assumes that the image's
width spans :data:`FALLBACK_FIELD_WIDTH_MM` (350 mm, the width of a 35 x 43 cm (14 x 17 inch)
chest detector in portrait) with square pixels: 0.171 mm at 2048 columns. A chest radiograph
is collimated to the chest, so its width is the most stable physical size we can assume; an
error of 20 % in this guess changes a 20 mm margin by 4 mm.

This module is the only implementation: training (:mod:`training.classifier`) and inference
(:func:`models.analyze`) both call :func:`apply_policy`.

See ``docs/mask-policies.md`` for pictures and the reasons behind the three policies.
"""

from __future__ import annotations

import enum
import logging

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

logger = logging.getLogger(__name__)

#: Outward margin of the loose mask around the hull of both lungs, in millimetres.
LOOSE_MARGIN_MM = 20.0
#: Erosion of each lung for the tight mask, in millimetres (0: the lungs as segmented).
TIGHT_EROSION_MM = 0.0
#: Field width assumed when the pixel spacing is unknown, in millimetres (35 cm detector).
FALLBACK_FIELD_WIDTH_MM = 350.0
#: Value given to pixels outside the policy's mask (images are float32 in [0, 1]).
FILL_VALUE = 0.0


class MaskPolicy(str, enum.Enum):
    """The lung-mask policies; values equal ``node.constants.MASK_POLICIES``."""

    ORIGINAL = "original"
    LOOSE = "loose"
    TIGHT = "tight"


def parse_policy(policy: "MaskPolicy | str") -> MaskPolicy:
    """Coerce a policy name into :class:`MaskPolicy`, refusing unknown names."""
    if isinstance(policy, MaskPolicy):
        return policy
    try:
        return MaskPolicy(str(policy))
    except ValueError:
        choices = ", ".join(p.value for p in MaskPolicy)
        raise ValueError(f"unknown mask policy {policy!r}; choose one of: {choices}") from None


def fallback_pixel_spacing(shape: tuple[int, int]) -> tuple[float, float]:
    """Pixel spacing assumed when the image carries none.

    Parameters
    ----------
    shape : (H, W)
        Image shape in pixels.

    Returns
    -------
    (row_spacing_mm, column_spacing_mm)
        Square pixels such that the width spans :data:`FALLBACK_FIELD_WIDTH_MM`.
    """
    width = int(shape[1])
    if width <= 0:
        raise ValueError(f"image width must be positive to derive a pixel spacing; got shape {shape}")
    spacing = FALLBACK_FIELD_WIDTH_MM / width
    return (spacing, spacing)


def effective_pixel_spacing(
    shape: tuple[int, int], pixel_spacing_mm: tuple[float, float] | None
) -> tuple[float, float]:
    """The spacing the policies use: the given one, checked, or the documented fallback."""
    if pixel_spacing_mm is None:
        spacing = fallback_pixel_spacing(shape)
        logger.debug("pixel spacing unknown; assuming %.4f mm (field width %.0f mm)", spacing[0], FALLBACK_FIELD_WIDTH_MM)
        return spacing
    if len(pixel_spacing_mm) != 2:
        raise ValueError(f"pixel spacing must be (row_mm, column_mm); got {pixel_spacing_mm!r}")
    row, col = float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1])
    if not (np.isfinite(row) and np.isfinite(col) and row > 0 and col > 0):
        raise ValueError(f"pixel spacing must be two positive millimetre values; got {pixel_spacing_mm!r}")
    return (row, col)


def dilate_mm(mask: np.ndarray, margin_mm: float, pixel_spacing_mm: tuple[float, float]) -> np.ndarray:
    """Grow a mask by ``margin_mm`` (a disk in millimetres; an ellipse in anisotropic pixels).

    Parameters
    ----------
    mask : (H, W) bool
    margin_mm : float, >= 0
    pixel_spacing_mm : (row_mm, column_mm)

    Returns
    -------
    (H, W) bool
        Every pixel whose centre lies within ``margin_mm`` of a pixel of ``mask``.
    """
    mask = np.asarray(mask, dtype=bool)
    if margin_mm <= 0 or not mask.any():
        return mask.copy()
    distance = ndimage.distance_transform_edt(~mask, sampling=pixel_spacing_mm)
    return distance <= margin_mm


def erode_mm(mask: np.ndarray, margin_mm: float, pixel_spacing_mm: tuple[float, float]) -> np.ndarray:
    """Shrink a mask by ``margin_mm``: keep pixels farther than that from the background.

    Shapes as in :func:`dilate_mm`; the image border counts as background.
    """
    mask = np.asarray(mask, dtype=bool)
    if margin_mm <= 0 or not mask.any():
        return mask.copy()
    padded = np.pad(mask, 1, constant_values=False)
    distance = ndimage.distance_transform_edt(padded, sampling=pixel_spacing_mm)[1:-1, 1:-1]
    return distance > margin_mm


def convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """The filled convex hull of a mask (always containing the mask itself).

    Parameters
    ----------
    mask : (H, W) bool

    Returns
    -------
    (H, W) bool
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    # Hull of the pixel corners, computed on the boundary pixels only (fast on large masks).
    boundary = mask & ~ndimage.binary_erosion(mask)
    rows, cols = np.nonzero(boundary)
    corners = np.concatenate(
        [
            np.stack([cols + dx, rows + dy], axis=1)
            for dx, dy in ((-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5))
        ]
    )
    try:
        hull = ConvexHull(corners)
    except QhullError:  # degenerate (a line of pixels): the mask is its own hull
        return mask.copy()
    polygon = [(float(x), float(y)) for x, y in corners[hull.vertices]]
    canvas = Image.new("1", (mask.shape[1], mask.shape[0]), 0)
    ImageDraw.Draw(canvas).polygon(polygon, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool) | mask


def _check_masks(left: np.ndarray, right: np.ndarray, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    left = np.asarray(left)
    right = np.asarray(right)
    if left.ndim != 2 or left.shape != right.shape:
        raise ValueError(
            f"left and right lung masks must be two (H, W) arrays of the same shape; got {left.shape} and {right.shape}"
        )
    if shape is not None and left.shape != tuple(shape):
        raise ValueError(f"lung masks must match the image's (H, W) = {tuple(shape)}; got {left.shape}")
    return left.astype(bool, copy=False), right.astype(bool, copy=False)


def policy_mask(
    left: np.ndarray,
    right: np.ndarray,
    policy: MaskPolicy | str,
    pixel_spacing_mm: tuple[float, float] | None,
) -> np.ndarray | None:
    """The region a policy keeps.

    Parameters
    ----------
    left, right : (H, W) bool
        Patient's left and right lung masks, indexed ``[row, column]``.
    policy : MaskPolicy or str
        ``original``, ``loose`` or ``tight``.
    pixel_spacing_mm : (row_mm, column_mm) or None
        Pixel spacing; ``None`` uses :func:`fallback_pixel_spacing`.

    Returns
    -------
    (H, W) bool, or None for ``original`` (nothing is masked).

    Raises
    ------
    ValueError
        Unknown policy, masks of different shapes, a bad spacing, or both lungs empty under
        ``loose``/``tight`` (a failed segmentation must be reported, not masked with nothing).
    """
    policy = parse_policy(policy)
    left, right = _check_masks(left, right)
    if policy is MaskPolicy.ORIGINAL:
        return None
    union = left | right
    if not union.any():
        raise ValueError(
            f"mask policy {policy.value!r} needs lung masks, but both are empty; "
            "report the segmentation as failed or use the 'original' policy"
        )
    spacing = effective_pixel_spacing(union.shape, pixel_spacing_mm)
    if policy is MaskPolicy.LOOSE:
        return dilate_mm(convex_hull_mask(union), LOOSE_MARGIN_MM, spacing)
    # TIGHT: each lung on its own, so an erosion never merges or bridges them.
    return erode_mm(left, TIGHT_EROSION_MM, spacing) | erode_mm(right, TIGHT_EROSION_MM, spacing)


def apply_policy(
    image: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    policy: MaskPolicy | str,
    pixel_spacing_mm: tuple[float, float] | None,
) -> np.ndarray:
    """The image as the classifier sees it under a policy.

    Parameters
    ----------
    image : (H, W) float32 in [0, 1]
    left, right : (H, W) bool
        Lung masks of the same shape as ``image``.
    policy : MaskPolicy or str
    pixel_spacing_mm : (row_mm, column_mm) or None

    Returns
    -------
    (H, W) float32
        A copy of ``image`` with pixels outside :func:`policy_mask` set to :data:`FILL_VALUE`;
        for ``original``, a float32 copy of the image unchanged.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be a single (H, W) plane; got shape {image.shape}")
    _check_masks(left, right, image.shape)
    out = image.astype(np.float32, copy=True)
    keep = policy_mask(left, right, policy, pixel_spacing_mm)
    if keep is not None:
        out[~keep] = FILL_VALUE
    return out


def describe_policy(policy: MaskPolicy | str) -> dict[str, object]:
    """The policy and its parameters, as recorded in model manifests and results."""
    policy = parse_policy(policy)
    description: dict[str, object] = {"policy": policy.value, "fill_value": FILL_VALUE}
    if policy is MaskPolicy.LOOSE:
        description.update(hull="convex hull of both lungs", margin_mm=LOOSE_MARGIN_MM)
    elif policy is MaskPolicy.TIGHT:
        description.update(erosion_mm=TIGHT_EROSION_MM)
    if policy is not MaskPolicy.ORIGINAL:
        description["fallback_field_width_mm"] = FALLBACK_FIELD_WIDTH_MM
    return description
