"""LungSegmenter: official decode path, one embedding for both lungs, automatic boxes, failures.

The quality test loads the committed demo segmenter of the bundled store (trained by
``training.segmenter.train_demo_segmenter``) and measures Dice per lung on held-out phantoms
with automatic boxes only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.segmenter import LungSegmenter, build_segmenter
from models.segmenter.boxes import box_iou, default_boxes, mask_bounding_box
from models.store import ModelStore
from training.phantoms import generate_phantom
from training.evaluation import dice as dice_score
from training.segmenter import HELD_OUT_SEED_BASE, held_out_phantoms


@pytest.fixture(scope="module")
def demo_segmenter() -> LungSegmenter:
    version = ModelStore(None).active_segmenter()  # the bundled demo store's
    version.verify()  # the committed weights file matches its manifest's sha256
    return LungSegmenter(build_segmenter(version.manifest.architecture, version.weights_path))


@pytest.fixture(scope="module")
def random_segmenter() -> LungSegmenter:
    torch.manual_seed(0)
    return LungSegmenter(build_segmenter("sam_tiny"))


@torch.no_grad()
def official_medsam_inference(medsam_model, img_embed, box_1024, height, width) -> np.ndarray:
    """``medsam_inference`` of bowang-lab/MedSAM ``MedSAM_Inference.py`` (boxes already scaled)."""
    box_torch = torch.as_tensor(box_1024, dtype=torch.float, device=img_embed.device)
    if len(box_torch.shape) == 2:
        box_torch = box_torch[:, None, :]
    sparse_embeddings, dense_embeddings = medsam_model.prompt_encoder(points=None, boxes=box_torch, masks=None)
    low_res_logits, _ = medsam_model.mask_decoder(
        image_embeddings=img_embed,
        image_pe=medsam_model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse_embeddings,
        dense_prompt_embeddings=dense_embeddings,
        multimask_output=False,
    )
    low_res_pred = torch.sigmoid(low_res_logits)
    low_res_pred = F.interpolate(low_res_pred, size=(height, width), mode="bilinear", align_corners=False)
    return (low_res_pred.squeeze().cpu().numpy() > 0.5).astype(np.uint8)


def test_stages_have_medsam_shapes_and_decode_equals_the_official_inference(demo_segmenter):
    phantom = generate_phantom(320, seed=HELD_OUT_SEED_BASE + 500)
    image = phantom.image[:, 10:290]  # non-square: 320 x 280
    height, width = image.shape

    tensor = demo_segmenter.preprocess(image)
    assert tuple(tensor.shape) == (1, 3, 256, 256) and float(tensor.min()) == 0.0 and float(tensor.max()) == 1.0
    embedding = demo_segmenter.embed(tensor)
    assert tuple(embedding.shape) == (1, 128, 16, 16)

    boxes = np.array([[150.0, 30.0, 270.0, 260.0], [10.0, 30.0, 140.0, 260.0]])  # xyxy, source pixels
    masks, iou = demo_segmenter.decode(embedding, boxes, (height, width))
    assert masks.shape == (2, height, width) and masks.dtype == bool
    assert iou.shape == (2,)

    sam = demo_segmenter.sam
    box_256 = boxes / np.array([width, height, width, height]) * 256
    for index in range(2):
        reference = official_medsam_inference(sam, embedding, box_256[index : index + 1], height, width)
        assert np.array_equal(masks[index], reference.astype(bool))


def test_segment_embeds_the_image_once_for_both_lungs_and_all_refinements(demo_segmenter):
    calls = []
    handle = demo_segmenter.sam.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        result = demo_segmenter.segment(generate_phantom(256, seed=HELD_OUT_SEED_BASE + 501).image)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert result.ok, result.failure_reason
    assert set(result.boxes) == {"left", "right"}
    # the patient's left lung is found in the image's right half (display orientation)
    assert result.boxes["left"][0] > result.boxes["right"][2] - 5


def test_automatic_boxes_converge_from_the_half_image_boxes_to_each_lungs_own_box(demo_segmenter):
    phantom = generate_phantom(384, seed=HELD_OUT_SEED_BASE + 504)
    result = demo_segmenter.segment(phantom.image)
    assert result.ok, result.failure_reason
    for side, truth in (("left", phantom.left_lung), ("right", phantom.right_lung)):
        true_box = mask_bounding_box(truth)
        assert box_iou(default_boxes(truth.shape)[side], true_box) < 0.75  # the coarse box is loose
        assert box_iou(result.boxes[side], true_box) > 0.85  # the refined box fits the lung


@pytest.mark.slow
def test_demo_segmenter_reaches_dice_090_per_lung_on_held_out_phantoms_with_automatic_boxes(demo_segmenter):
    examples = held_out_phantoms(30)
    dices = {"left": [], "right": []}
    failures = 0
    for image, left, right in examples:
        result = demo_segmenter.segment(image)  # no ground-truth boxes
        failures += int(not result.ok)
        dices["left"].append(dice_score(result.left, left))
        dices["right"].append(dice_score(result.right, right))
    assert np.mean(dices["left"]) >= 0.90, dices["left"]
    assert np.mean(dices["right"]) >= 0.90, dices["right"]
    assert failures <= 1


def test_demo_segmenter_on_a_larger_radiograph_returns_full_size_masks(demo_segmenter):
    phantom = generate_phantom(768, seed=HELD_OUT_SEED_BASE + 502)
    result = demo_segmenter.segment(phantom.image)
    assert result.left.shape == result.right.shape == (768, 768)
    assert result.ok, result.failure_reason
    assert dice_score(result.left, phantom.left_lung) > 0.85
    assert dice_score(result.right, phantom.right_lung) > 0.85


def test_all_black_image_is_reported_as_a_failure_with_empty_masks(demo_segmenter):
    result = demo_segmenter.segment(np.zeros((256, 256), dtype=np.float32))
    assert not result.ok
    assert result.failure_reason.startswith("contrast: ")  # lungs drawn where nothing is darker
    assert not result.left.any() and not result.right.any()


def test_random_weights_model_is_reported_as_a_failure(random_segmenter):
    result = random_segmenter.segment(generate_phantom(256, seed=HELD_OUT_SEED_BASE + 503).image)
    assert not result.ok
    assert result.failure_reason.startswith("quality: ")
    assert not result.left.any() and not result.right.any()


def test_segment_refuses_a_colour_image(random_segmenter):
    with pytest.raises(ValueError, match=r"shape \(H, W\)"):
        random_segmenter.segment(np.zeros((64, 64, 3), dtype=np.float32))
