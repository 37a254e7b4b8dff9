"""MedSAM's pre- and post-processing, exactly as the official ``MedSAM_Inference.py`` runs it.

Preprocessing (:func:`preprocess_image`)
    grey ``(H, W)`` image -> 3 identical channels -> resized straight to ``S x S`` with
    ``skimage.transform.resize(order=3, preserve_range=True, anti_aliasing=True)`` (bicubic
    spline, Gaussian anti-aliasing, no padding, aspect ratio not kept) -> min-max scaled to
    ``[0, 1]``. No ImageNet mean/std: the tensor goes to ``sam.image_encoder`` directly, never
    through ``Sam.preprocess``.

    The official script reads 8-bit PNGs and casts the resized image back to ``uint8`` before the
    min-max scaling; our input is already float in ``[0, 1]``, so that cast (which would quantise
    it to 0/1) is not applied. Resizing the grey image once and repeating it is identical to
    resizing the 3-channel stack (skimage filters each channel alone), at a third of the cost.

Box prompts (:func:`scale_boxes`)
    ``xyxy`` in original pixels, scaled by ``S / W`` and ``S / H``, shape ``(B, 1, 4)``.

Post-processing (:func:`postprocess_logits`)
    decoder logits ``(B, 1, S/4, S/4)`` (``multimask_output=False``) -> sigmoid -> bilinear
    upsampling to ``H x W`` (``align_corners=False``) -> ``> 0.5``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage import transform as sk_transform

#: Lower bound of the min-max denominator, as in the official code.
MINMAX_EPS = 1e-8

#: Probability above which a pixel belongs to the mask.
MASK_THRESHOLD = 0.5


def check_grey_image(image: np.ndarray) -> np.ndarray:
    """Validate a radiograph array and return it as float64.

    Raises
    ------
    ValueError
        When ``image`` is not a 2-D array with at least 8 x 8 finite pixels.
    """
    array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"the segmenter takes one grey image of shape (H, W); got shape {array.shape}")
    if min(array.shape) < 8:
        raise ValueError(f"image must be at least 8 x 8 pixels; got {array.shape[0]} x {array.shape[1]}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"image must hold real numbers; got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        raise ValueError("image holds NaN or infinite pixels; replace them before segmenting")
    return array


def preprocess_image(image: np.ndarray, input_size: int) -> np.ndarray:
    """MedSAM preprocessing of one grey radiograph.

    Parameters
    ----------
    image:
        ``(H, W)`` grey image, any real dtype (float32 in ``[0, 1]`` in the node).
    input_size:
        Side ``S`` of the model input.

    Returns
    -------
    numpy.ndarray
        ``(3, S, S)`` float32 in ``[0, 1]``, channels identical.
    """
    grey = check_grey_image(image)
    resized = sk_transform.resize(
        grey, (input_size, input_size), order=3, preserve_range=True, anti_aliasing=True
    )
    low, high = resized.min(), resized.max()
    scaled = (resized - low) / np.clip(high - low, a_min=MINMAX_EPS, a_max=None)
    return np.repeat(scaled[None].astype(np.float32), 3, axis=0)


def scale_boxes(boxes_xyxy: np.ndarray, image_shape: tuple[int, int], input_size: int) -> np.ndarray:
    """Scale box prompts from original pixels to model-input pixels.

    Parameters
    ----------
    boxes_xyxy:
        ``(B, 4)`` boxes ``(x0, y0, x1, y1)`` in original-image pixels (x = column, y = row).
    image_shape:
        ``(H, W)`` of the original image.
    input_size:
        Side ``S`` of the model input.

    Returns
    -------
    numpy.ndarray
        ``(B, 1, 4)`` float32 boxes in ``S x S`` input pixels (``x * S / W``, ``y * S / H``).
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (B, 4) as xyxy; got {boxes.shape}")
    height, width = image_shape
    factors = np.array([input_size / width, input_size / height, input_size / width, input_size / height])
    return (boxes * factors)[:, None, :].astype(np.float32)


def postprocess_logits(low_res_logits: torch.Tensor, image_shape: tuple[int, int]) -> np.ndarray:
    """Turn decoder logits into binary masks at the original size.

    Parameters
    ----------
    low_res_logits:
        ``(B, 1, s, s)`` mask logits from the decoder with ``multimask_output=False``
        (``s = S / 4``).
    image_shape:
        ``(H, W)`` of the original image.

    Returns
    -------
    numpy.ndarray
        ``(B, H, W)`` bool masks: ``sigmoid -> bilinear (align_corners=False) -> > 0.5``.
    """
    if low_res_logits.ndim != 4 or low_res_logits.shape[1] != 1:
        raise ValueError(f"expected logits of shape (B, 1, s, s); got {tuple(low_res_logits.shape)}")
    probabilities = torch.sigmoid(low_res_logits.float())
    upsampled = F.interpolate(probabilities, size=tuple(image_shape), mode="bilinear", align_corners=False)
    return (upsampled[:, 0] > MASK_THRESHOLD).cpu().numpy()
