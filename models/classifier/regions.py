"""Where a finding's evidence lies: class activation maps turned into ellipses.

For one finding k, the class activation map (CAM) of :meth:`ChestNet.class_activation_maps`,
computed from the same forward pass as the probabilities
(:meth:`ChestClassifier.predict_with_maps`), is upsampled (bilinear) from the feature grid
``(h, w)`` to the model input grid ``(S, S)``.
The region is the connected part of ``CAM >= fraction * max(CAM)`` that holds the peak; its
ellipse has the region's centroid as centre and twice the standard deviation of its pixel
coordinates along x and y as semi-axes (exact for a filled axis-aligned ellipse), at least one
model pixel. The model grid maps linearly onto the source image (the input was resized straight,
see :func:`models.classifier.network.resize_images`):
``x_src = (x_model + 0.5) * W / S - 0.5`` and likewise for y with H; lengths scale by W/S and H/S.

Every backbone in :mod:`models.classifier.backbones` ends in global average pooling and one
linear layer, so CAM is exact for all of them (for such heads Grad-CAM equals CAM up to a
positive factor per class); no gradient pass is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from models.result import FindingRegion

if TYPE_CHECKING:
    from models.classifier.network import ChestClassifier

#: Part of the CAM's maximum above which pixels belong to the region.
DEFAULT_REGION_FRACTION = 0.5


def region_from_map(
    activation: np.ndarray, source_shape: tuple[int, int], fraction: float = DEFAULT_REGION_FRACTION
) -> FindingRegion:
    """The ellipse around the peak of one activation map, in source pixels.

    Parameters
    ----------
    activation : (S, S) float
        Map on the model input grid (any real values; the peak is the argmax).
    source_shape : (H, W)
        Shape of the source image the model input was resized from.
    fraction : float in (0, 1]
        Threshold as a part of the peak value (relative to the map's minimum when the peak is
        not positive).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"region fraction must lie in (0, 1]; got {fraction}")
    activation = np.asarray(activation, dtype=np.float64)
    size_y, size_x = activation.shape
    peak = np.unravel_index(int(np.argmax(activation)), activation.shape)
    top = activation[peak]
    low = min(0.0, float(activation.min())) if top > 0 else float(activation.min())
    above = activation >= low + fraction * (top - low)
    labels, _ = ndimage.label(above)
    rows, cols = np.nonzero(labels == labels[peak])
    cy, cx = rows.mean(), cols.mean()
    ay = max(2.0 * rows.std(), 1.0)
    ax = max(2.0 * cols.std(), 1.0)
    height, width = source_shape
    sx, sy = width / size_x, height / size_y
    return FindingRegion(
        center_xy=(float((cx + 0.5) * sx - 0.5), float((cy + 0.5) * sy - 0.5)),
        semi_axes_xy=(float(ax * sx), float(ay * sy)),
    )


def regions_from_maps(
    cams: np.ndarray,
    labels: Sequence[str],
    input_size: int,
    source_shape: tuple[int, int],
    findings: Sequence[str] | None = None,
    fraction: float = DEFAULT_REGION_FRACTION,
) -> dict[str, FindingRegion]:
    """One :class:`~models.result.FindingRegion` per requested finding, from one image's CAMs.

    Parameters
    ----------
    cams : (K, h, w) float32
        Class activation maps of one image on the feature grid, in ``labels`` order (a row of
        :meth:`ChestClassifier.predict_with_maps`'s maps).
    labels : the classifier's labels, in output order.
    input_size : side ``S`` of the model input the maps are upsampled to (bilinear).
    source_shape : (H, W) of the image the model input was resized from.
    findings : labels to locate; default all of ``labels``. The caller usually passes the
        findings above their thresholds.
    fraction : float
        See :func:`region_from_map`.

    Returns
    -------
    dict finding -> FindingRegion (centre and semi-axes in source pixels, x = column, y = row).
    """
    wanted = list(labels) if findings is None else list(findings)
    unknown = [f for f in wanted if f not in labels]
    if unknown:
        raise ValueError(f"unknown findings {unknown}; the classifier scores {list(labels)}")
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 3 or cams.shape[0] != len(labels):
        raise ValueError(f"activation maps must be (K, h, w) with K = {len(labels)} labels; got shape {cams.shape}")
    if not wanted:
        return {}
    size = int(input_size)
    up = F.interpolate(torch.from_numpy(cams)[None], size=(size, size), mode="bilinear", align_corners=False)[0].numpy()
    shape = (int(source_shape[0]), int(source_shape[1]))
    return {f: region_from_map(up[list(labels).index(f)], shape, fraction) for f in wanted}


def finding_regions(
    classifier: "ChestClassifier",
    image: np.ndarray,
    findings: Sequence[str] | None = None,
    fraction: float = DEFAULT_REGION_FRACTION,
) -> dict[str, FindingRegion]:
    """Regions of one image by its own forward pass (:func:`regions_from_maps` of its CAMs).

    Parameters
    ----------
    classifier : ChestClassifier
    image : (H, W) float32 in [0, 1]
        The image as the classifier sees it (already masked by its policy).
    findings, fraction : see :func:`regions_from_maps`.

    When the probabilities are needed too, call :meth:`ChestClassifier.predict_with_maps` once
    and :func:`regions_from_maps` on its maps, as :func:`models.analyze` does.
    """
    _, cams = classifier.predict_with_maps([image])
    return regions_from_maps(
        cams[0], classifier.labels, classifier.config.input_size, (int(image.shape[0]), int(image.shape[1])), findings, fraction
    )
