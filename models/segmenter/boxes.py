"""Box prompts for the two lungs, found without a human.

MedSAM segments what a box prompt encloses, so an unseen radiograph needs boxes before it can
be segmented. The node finds them in two stages, both decoded from the *same* image embedding
(the costly encoder runs once; a decode is cheap):

1. **Coarse pass.** One generous default box per image half (:func:`default_boxes`): on a PA/AP
   radiograph in display orientation the patient's right lung lies in the image's left half and
   the left lung in the image's right half. The boxes leave a thin border and meet at the
   midline, so they enclose each lung of any plausible size and position.
2. **Refinement.** Each lung's box is replaced by the bounding box of the largest connected part
   of that lung's own mask (stray specks ignored) plus a
   small margin (:func:`refine_box`, :data:`REFINE_MARGIN_FRACTION` of the image side, comparable
   to the 0-20 px jitter MedSAM is trained with at 1024 px), and the decoder runs again. This
   repeats until the boxes stop moving (:data:`BOX_CONVERGENCE_IOU`) or after
   :data:`MAX_REFINEMENTS` rounds. A lung whose mask is empty keeps its previous box; the
   plausibility check then reports the failure.

All boxes are ``(x0, y0, x1, y1)`` in source-image pixels, x = column, y = row.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Border left free by the coarse boxes, as a fraction of the image width/height.
DEFAULT_BOX_BORDER = 0.03

#: Margin added around a mask's bounding box when refining, as a fraction of the image side.
REFINE_MARGIN_FRACTION = 0.01

#: Refinement rounds after the coarse pass, at most.
MAX_REFINEMENTS = 3

#: Connected components are found on a copy reduced to at most this many pixels per side.
COMPONENT_GRID = 512

#: Boxes whose IoU with the previous round's exceeds this are considered converged.
BOX_CONVERGENCE_IOU = 0.97

Box = tuple[float, float, float, float]


def default_boxes(image_shape: tuple[int, int]) -> dict[str, Box]:
    """The coarse-pass boxes of both lungs.

    Parameters
    ----------
    image_shape:
        ``(H, W)`` of the source image, display orientation (patient's left on the image's right).

    Returns
    -------
    dict
        ``{"left": xyxy, "right": xyxy}`` in source pixels; ``"right"`` (patient's right lung)
        covers the image's left half, ``"left"`` the image's right half.
    """
    height, width = image_shape
    bx, by = DEFAULT_BOX_BORDER * width, DEFAULT_BOX_BORDER * height
    mid = width / 2.0
    return {
        "left": (mid, by, width - bx, height - by),
        "right": (bx, by, mid, height - by),
    }


def mask_bounding_box(mask: np.ndarray) -> Box | None:
    """Tight box ``xyxy`` of a ``(H, W)`` bool mask in pixel-edge coordinates, or ``None`` if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a ``(H, W)`` bool mask (the mask itself if it has one)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return np.asarray(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def refine_box(mask: np.ndarray, previous: Box) -> Box:
    """Box for the next decode: the bounding box of the mask's largest connected component plus a
    margin, clipped to the image.

    Stray specks (for example a few pixels in the other lung) are ignored: a box stretched to
    include them would also enclose part of the other lung.

    Parameters
    ----------
    mask:
        ``(H, W)`` bool mask decoded from ``previous``.
    previous:
        The box that produced ``mask``; returned unchanged when ``mask`` is empty.
    """
    height, width = mask.shape
    step = max(1, -(-max(height, width) // COMPONENT_GRID))  # ceil division
    reduced = mask_bounding_box(largest_component(mask[::step, ::step]))
    if reduced is None:
        return previous
    # back to full resolution: the reduced grid's pixel i covers rows/columns i*step .. i*step+step-1
    tight = (reduced[0] * step, reduced[1] * step, reduced[2] * step, reduced[3] * step)
    margin_x = REFINE_MARGIN_FRACTION * width
    margin_y = REFINE_MARGIN_FRACTION * height
    x0, y0, x1, y1 = tight
    return (
        max(0.0, x0 - margin_x),
        max(0.0, y0 - margin_y),
        min(float(width), x1 + margin_x),
        min(float(height), y1 + margin_y),
    )


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``xyxy`` boxes (0 when both are empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0
