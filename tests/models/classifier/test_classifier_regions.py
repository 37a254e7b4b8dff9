"""From activation maps to ellipses in source pixels (models.classifier.regions)."""

from __future__ import annotations

import numpy as np
import pytest

from models.classifier.regions import region_from_map


def blob(size: int, cx: float, cy: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))


def test_region_centre_and_size_follow_the_blob_in_source_pixels():
    activation = blob(64, cx=40.0, cy=20.0, sigma=4.0)
    region = region_from_map(activation, (256, 128), fraction=0.5)  # source H=256, W=128
    sx, sy = 128 / 64, 256 / 64
    assert region.center_xy == pytest.approx(((40 + 0.5) * sx - 0.5, (20 + 0.5) * sy - 0.5), abs=0.2 * sy)
    # the half-maximum disk of a Gaussian has radius sigma*sqrt(2 ln 2) ~ 4.7 model pixels
    assert region.semi_axes_xy[0] == pytest.approx(4.7 * sx, rel=0.2)
    assert region.semi_axes_xy[1] == pytest.approx(4.7 * sy, rel=0.2)


def test_region_keeps_only_the_part_around_the_peak():
    activation = blob(64, 15.0, 15.0, 3.0) + 0.9 * blob(64, 50.0, 50.0, 3.0)
    region = region_from_map(activation, (64, 64), fraction=0.5)
    assert region.center_xy == pytest.approx((15.0, 15.0), abs=1.0)
    assert max(region.semi_axes_xy) < 8


def test_region_of_a_negative_map_still_surrounds_its_peak():
    activation = blob(32, 10.0, 20.0, 3.0) - 5.0
    region = region_from_map(activation, (32, 32))
    assert region.center_xy == pytest.approx((10.0, 20.0), abs=1.0)


def test_region_fraction_must_lie_in_zero_one():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        region_from_map(np.zeros((8, 8)), (8, 8), fraction=0.0)
