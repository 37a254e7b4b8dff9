"""MedSAM pre- and post-processing against a re-implementation of the official recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import transform

from models.segmenter.transforms import postprocess_logits, preprocess_image, scale_boxes
from training.phantoms import generate_phantom


def official_medsam_preprocessing(img_np: np.ndarray, size: int, *, eight_bit: bool) -> np.ndarray:
    """The image preprocessing of bowang-lab/MedSAM ``MedSAM_Inference.py``, step by step.

    Returns ``(3, size, size)`` float32, as the tensor handed to ``medsam_model.image_encoder``.
    """
    if len(img_np.shape) == 2:
        img_3c = np.repeat(img_np[:, :, None], 3, axis=-1)
    else:
        img_3c = img_np
    img_1024 = transform.resize(img_3c, (size, size), order=3, preserve_range=True, anti_aliasing=True)
    if eight_bit:  # the official script reads 8-bit PNGs and casts back to uint8
        img_1024 = img_1024.astype(np.uint8)
    img_1024 = (img_1024 - img_1024.min()) / np.clip(img_1024.max() - img_1024.min(), a_min=1e-8, a_max=None)
    return torch.tensor(img_1024).float().permute(2, 0, 1).numpy()


def official_medsam_postprocessing(low_res_logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """``medsam_inference`` after the decoder: sigmoid, bilinear to H x W, > 0.5 (one box)."""
    low_res_pred = torch.sigmoid(low_res_logits)
    low_res_pred = F.interpolate(low_res_pred, size=(height, width), mode="bilinear", align_corners=False)
    low_res_pred = low_res_pred.squeeze().cpu().numpy()
    return (low_res_pred > 0.5).astype(np.uint8)


@pytest.mark.parametrize(("shape", "size"), [((512, 512), 256), ((300, 260), 256), ((120, 100), 256)])
def test_preprocessing_equals_the_official_recipe_on_float_images(shape, size):
    phantom = generate_phantom(512, seed=7)
    image = phantom.image[: shape[0], : shape[1]]

    ours = preprocess_image(image, size)
    reference = official_medsam_preprocessing(image.astype(np.float64), size, eight_bit=False)

    assert ours.shape == (3, size, size) and ours.dtype == np.float32
    assert np.abs(ours - reference).max() < 1e-5
    assert ours.min() == 0.0 and ours.max() == 1.0


def test_preprocessing_matches_the_official_eight_bit_path_within_one_grey_level():
    image = np.round(generate_phantom(384, seed=3).image * 255).astype(np.uint8)

    ours = preprocess_image(image, 256)
    reference = official_medsam_preprocessing(image, 256, eight_bit=True)

    # the official uint8 cast truncates the resized image by less than one grey level
    assert np.abs(ours - reference).max() < 2.0 / 255.0


def test_preprocessing_is_not_imagenet_normalised_and_channels_are_identical():
    out = preprocess_image(np.linspace(0.2, 0.6, 64 * 48, dtype=np.float32).reshape(64, 48), 256)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3)), np.zeros((5, 100)), np.full((20, 20), np.nan)])
def test_preprocessing_refuses_unusable_images(bad):
    with pytest.raises(ValueError):
        preprocess_image(bad, 256)


def test_boxes_are_scaled_by_input_size_over_width_and_height():
    boxes = np.array([[10.0, 20.0, 110.0, 220.0], [0.0, 0.0, 400.0, 300.0]])
    scaled = scale_boxes(boxes, (300, 400), 1024)
    assert scaled.shape == (2, 1, 4)
    np.testing.assert_allclose(scaled[0, 0], [10 * 1024 / 400, 20 * 1024 / 300, 110 * 1024 / 400, 220 * 1024 / 300],
                               rtol=1e-6)
    np.testing.assert_allclose(scaled[1, 0], [0, 0, 1024, 1024], rtol=1e-6)
    with pytest.raises(ValueError, match=r"shape \(B, 4\)"):
        scale_boxes(np.zeros((2, 1, 4)), (300, 400), 1024)


def test_postprocessing_matches_the_official_code_and_has_the_source_shape():
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 1, 64, 64, generator=generator) * 3
    masks = postprocess_logits(logits, (300, 260))
    assert masks.shape == (2, 300, 260) and masks.dtype == bool
    for index in range(2):
        reference = official_medsam_postprocessing(logits[index : index + 1], 300, 260)
        assert np.array_equal(masks[index], reference.astype(bool))
    with pytest.raises(ValueError, match=r"\(B, 1, s, s\)"):
        postprocess_logits(torch.zeros(2, 3, 64, 64), (300, 260))
