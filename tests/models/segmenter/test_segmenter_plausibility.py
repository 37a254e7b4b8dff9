"""Plausibility checks: each implausible mask pair fails the check named after its defect."""

from __future__ import annotations

import numpy as np
import pytest

from models.segmenter.boxes import box_iou, default_boxes, mask_bounding_box, refine_box
from models.segmenter.plausibility import check_lung_masks

GOOD_QUALITY = {"left": 0.9, "right": 0.9}


def _ellipse(shape: tuple[int, int], cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((cols - cx) / rx) ** 2 + ((rows - cy) / ry) ** 2 <= 1.0


def _lungs(shape=(200, 180)):
    """A plausible pair: patient's right lung on the image's left, left lung on the right."""
    height, width = shape
    right = _ellipse(shape, 0.28 * width, 0.5 * height, 0.15 * width, 0.3 * height)
    left = _ellipse(shape, 0.72 * width, 0.5 * height, 0.14 * width, 0.28 * height)
    return left, right


def test_plausible_pair_passes():
    left, right = _lungs()
    verdict = check_lung_masks(left, right, GOOD_QUALITY)
    assert verdict.ok and verdict.check is None


def test_low_predicted_iou_fails_the_quality_check():
    left, right = _lungs()
    verdict = check_lung_masks(left, right, {"left": 0.9, "right": 0.3})
    assert (verdict.ok, verdict.check) == (False, "quality")
    assert "right lung" in verdict.reason and "0.30" in verdict.reason


def test_empty_or_huge_lung_fails_the_area_check():
    left, right = _lungs()
    assert check_lung_masks(np.zeros_like(left), right, GOOD_QUALITY).check == "area"
    assert check_lung_masks(left, np.ones_like(right), GOOD_QUALITY).check == "area"


def test_swapped_lungs_fail_the_position_check():
    left, right = _lungs()
    verdict = check_lung_masks(right, left, GOOD_QUALITY)
    assert (verdict.ok, verdict.check) == (False, "position")
    assert "image's right half" in verdict.reason


def test_fragmented_lung_fails_the_components_check():
    left, right = _lungs()
    fragmented = left.copy()
    fragmented[90:110, :] = False  # cut the lung into two similar halves
    verdict = check_lung_masks(fragmented, right, GOOD_QUALITY)
    assert (verdict.ok, verdict.check) == (False, "components")


def test_overlapping_lungs_fail_the_overlap_check():
    shape = (200, 180)
    right = _ellipse(shape, 0.40 * 180, 100, 0.16 * 180, 60)
    left = _ellipse(shape, 0.60 * 180, 100, 0.16 * 180, 60)
    verdict = check_lung_masks(left, right, GOOD_QUALITY)
    assert (verdict.ok, verdict.check) == (False, "overlap")


def test_very_unequal_lungs_fail_the_balance_check():
    shape = (200, 180)
    right = _ellipse(shape, 0.28 * 180, 100, 0.17 * 180, 70)
    left = _ellipse(shape, 0.75 * 180, 100, 0.07 * 180, 35)
    verdict = check_lung_masks(left, right, GOOD_QUALITY)
    assert (verdict.ok, verdict.check) == (False, "balance")


def test_masks_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        check_lung_masks(np.zeros((10, 10), bool), np.zeros((10, 12), bool), GOOD_QUALITY)


def test_default_boxes_cover_each_image_half():
    boxes = default_boxes((300, 400))
    assert boxes["right"][0] < boxes["right"][2] == 200.0  # patient's right lung: image's left half
    assert boxes["left"][0] == 200.0 < boxes["left"][2] <= 400.0
    assert boxes["left"][1] < 0.05 * 300 and boxes["left"][3] > 0.95 * 300


def test_refined_box_is_the_mask_bounding_box_plus_a_margin_clipped_to_the_image():
    mask = np.zeros((200, 100), bool)
    mask[20:150, 0:40] = True
    assert mask_bounding_box(mask) == (0.0, 20.0, 40.0, 150.0)
    x0, y0, x1, y1 = refine_box(mask, previous=(0.0, 0.0, 50.0, 200.0))
    assert x0 == 0.0 and 40.0 < x1 < 43.0 and 17.0 < y0 < 20.0 and 150.0 < y1 < 153.0
    assert refine_box(np.zeros_like(mask), previous=(1.0, 2.0, 3.0, 4.0)) == (1.0, 2.0, 3.0, 4.0)
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0 and box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


def _radiograph(left: np.ndarray, right: np.ndarray, lung_value: float) -> np.ndarray:
    image = np.full(left.shape, 0.7, dtype=np.float32)
    image[left | right] = lung_value
    return image + np.random.default_rng(0).normal(0, 0.01, image.shape).astype(np.float32)


def test_dark_lungs_pass_the_contrast_check():
    left, right = _lungs()
    assert check_lung_masks(left, right, GOOD_QUALITY, image=_radiograph(left, right, 0.3)).ok


@pytest.mark.parametrize("lung_value", [0.7, 0.9])
def test_masks_on_flat_or_bright_regions_fail_the_contrast_check(lung_value):
    left, right = _lungs()
    verdict = check_lung_masks(left, right, GOOD_QUALITY, image=_radiograph(left, right, lung_value))
    assert (verdict.ok, verdict.check) == (False, "contrast")
    blank = check_lung_masks(left, right, GOOD_QUALITY, image=np.zeros(left.shape, np.float32))
    assert (blank.ok, blank.check) == (False, "contrast")
