"""Geometry of the lung-mask policies (models.policies), on synthetic lung masks and a phantom."""

from __future__ import annotations

import numpy as np
import pytest

from models.policies import (
    FALLBACK_FIELD_WIDTH_MM,
    FILL_VALUE,
    LOOSE_MARGIN_MM,
    MaskPolicy,
    apply_policy,
    dilate_mm,
    effective_pixel_spacing,
    fallback_pixel_spacing,
    policy_mask,
)
from node.constants import MASK_POLICIES
from training.phantoms import generate_phantom


def two_lungs(size: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Two vertical ellipses (patient's right lung on the image's left), a gap between them."""
    yy, xx = np.mgrid[:size, :size]
    right = ((xx - 0.28 * size) / (0.14 * size)) ** 2 + ((yy - 0.5 * size) / (0.32 * size)) ** 2 <= 1
    left = ((xx - 0.72 * size) / (0.14 * size)) ** 2 + ((yy - 0.5 * size) / (0.32 * size)) ** 2 <= 1
    return left, right


def outward_reach(mask: np.ndarray, row: int, start_col: int) -> int:
    """How many columns the mask extends to the right of ``start_col`` along ``row``."""
    cols = np.nonzero(mask[row, start_col:])[0]
    return int(cols.max()) if len(cols) else 0


def test_policy_names_match_node_constants():
    assert tuple(p.value for p in MaskPolicy) == MASK_POLICIES


def test_loose_contains_tight_on_a_phantom():
    ph = generate_phantom(192, seed=3)
    loose = policy_mask(ph.left_lung, ph.right_lung, "loose", ph.pixel_spacing_mm)
    tight = policy_mask(ph.left_lung, ph.right_lung, "tight", ph.pixel_spacing_mm)
    assert tight.any()
    assert not (tight & ~loose).any()
    assert loose.sum() > 1.5 * tight.sum()


def test_tight_is_the_lungs_and_loose_bridges_the_hila():
    left, right = two_lungs()
    loose = policy_mask(left, right, "loose", (1.0, 1.0))
    tight = policy_mask(left, right, "tight", (1.0, 1.0))
    np.testing.assert_array_equal(tight, left | right)
    hilum_row, midline = 100, 100
    assert not tight[hilum_row, midline]
    assert loose[hilum_row, 50:150].all()  # lungs, and everything between them at hilum height


def test_loose_keeps_the_region_between_the_lungs_on_a_phantom():
    ph = generate_phantom(192, seed=5)
    loose = policy_mask(ph.left_lung, ph.right_lung, "loose", ph.pixel_spacing_mm)
    tight = policy_mask(ph.left_lung, ph.right_lung, "tight", ph.pixel_spacing_mm)
    rows = np.nonzero((ph.left_lung | ph.right_lung).any(axis=1))[0]
    hilum_row = int(rows.min() + 0.4 * (rows.max() - rows.min()))
    right_cols = np.nonzero(ph.right_lung[hilum_row])[0]
    left_cols = np.nonzero(ph.left_lung[hilum_row])[0]
    gap = slice(right_cols.max() + 1, left_cols.min())
    assert gap.stop - gap.start >= 3
    assert loose[hilum_row, gap].all()
    assert not tight[hilum_row, gap].any()


@pytest.mark.parametrize("spacing", [0.5, 1.0])
def test_loose_margin_is_twenty_millimetres_outward(spacing):
    left, right = two_lungs(400)
    loose = policy_mask(left, right, "loose", (spacing, spacing))
    row = 200
    lung_edge = outward_reach(left, row, 0)
    expected_px = LOOSE_MARGIN_MM / spacing
    assert outward_reach(loose, row, 0) - lung_edge == pytest.approx(expected_px, abs=1.0)


def test_margin_in_pixels_scales_inversely_with_spacing():
    fine, coarse = (0.2, 0.2), (0.4, 0.4)
    left, right = two_lungs(400)
    grow_fine = outward_reach(dilate_mm(left, 10.0, fine), 200, 0) - outward_reach(left, 200, 0)
    grow_coarse = outward_reach(dilate_mm(left, 10.0, coarse), 200, 0) - outward_reach(left, 200, 0)
    assert grow_fine / grow_coarse == pytest.approx(2.0, rel=0.05)


def test_anisotropic_spacing_gives_a_margin_round_in_millimetres():
    mask = np.zeros((301, 301), bool)
    mask[150, 150] = True
    grown = dilate_mm(mask, 30.0, (1.0, 0.5))  # rows 1 mm, columns 0.5 mm
    rows, cols = np.nonzero(grown)
    assert rows.max() - 150 == 30  # 30 mm of rows
    assert cols.max() - 150 == 60  # 30 mm of columns


def test_fallback_spacing_assumes_a_350_mm_wide_field():
    assert FALLBACK_FIELD_WIDTH_MM == 350.0
    assert fallback_pixel_spacing((2500, 2048)) == pytest.approx((350 / 2048, 350 / 2048))
    assert effective_pixel_spacing((100, 350), None) == pytest.approx((1.0, 1.0))
    left, right = two_lungs(350)  # 350 columns: fallback is exactly 1 mm per pixel
    np.testing.assert_array_equal(
        policy_mask(left, right, "loose", None), policy_mask(left, right, "loose", (1.0, 1.0))
    )


def test_original_returns_the_image_unchanged():
    ph = generate_phantom(96, seed=1)
    out = apply_policy(ph.image, ph.left_lung, ph.right_lung, "original", ph.pixel_spacing_mm)
    assert policy_mask(ph.left_lung, ph.right_lung, MaskPolicy.ORIGINAL, ph.pixel_spacing_mm) is None
    np.testing.assert_array_equal(out, ph.image)
    assert out is not ph.image and out.dtype == np.float32


def test_apply_policy_fills_outside_the_mask_and_keeps_inside():
    ph = generate_phantom(128, seed=2)
    for policy in ("loose", "tight"):
        keep = policy_mask(ph.left_lung, ph.right_lung, policy, ph.pixel_spacing_mm)
        out = apply_policy(ph.image, ph.left_lung, ph.right_lung, policy, ph.pixel_spacing_mm)
        assert (out[~keep] == FILL_VALUE).all()
        np.testing.assert_array_equal(out[keep], ph.image[keep])


def test_unknown_policy_and_bad_inputs_are_refused_with_the_rule():
    left, right = two_lungs(50)
    with pytest.raises(ValueError, match="choose one of: original, loose, tight"):
        policy_mask(left, right, "medium", None)
    with pytest.raises(ValueError, match="same shape"):
        policy_mask(left, right[:40], "loose", None)
    with pytest.raises(ValueError, match="both are empty"):
        policy_mask(np.zeros_like(left), np.zeros_like(right), "tight", None)
    with pytest.raises(ValueError, match="positive millimetre"):
        policy_mask(left, right, "loose", (0.0, 1.0))
    with pytest.raises(ValueError, match="match the image"):
        apply_policy(np.zeros((60, 50), np.float32), left, right, "loose", None)
