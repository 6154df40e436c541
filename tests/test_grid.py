"""Region grid arithmetic, exact on sizes the region does not divide."""

from __future__ import annotations

import numpy as np
import pytest

from s4al_ray.regions import RegionGrid


def test_non_dividing_sizes_have_smaller_edge_regions():
    grid = RegionGrid(height=50, width=70, size=16)
    assert (grid.rows, grid.cols, grid.num_regions) == (4, 5, 20)
    areas = grid.areas.reshape(4, 5)
    assert areas[0, 0] == 256
    assert areas[0, 4] == 16 * 6  # last column is 70 - 64 = 6 wide
    assert areas[3, 0] == 2 * 16  # last row is 50 - 48 = 2 high
    assert areas[3, 4] == 2 * 6
    assert areas.sum() == 50 * 70  # the grid tiles the image exactly


@pytest.mark.parametrize("h, w, s", [(64, 80, 24), (7, 5, 3), (32, 32, 32), (33, 31, 8)])
def test_masks_partition_the_image(h, w, s):
    grid = RegionGrid(h, w, s)
    cover = np.zeros((h, w), dtype=int)
    for index in range(grid.num_regions):
        region = grid.mask([index])
        assert region.sum() == grid.areas[index]
        y0, y1, x0, x1 = grid.bounds(index)
        assert region[y0:y1, x0:x1].all()
        cover += region
    assert (cover == 1).all()


def test_region_means_use_true_areas():
    grid = RegionGrid(5, 5, 4)
    values = np.ones((5, 5))
    np.testing.assert_allclose(grid.region_means(values), 1.0)
    values[4, 4] = 9.0
    assert grid.region_means(values)[3] == 9.0
    assert grid.region_sums(values).sum() == values.sum()


def test_border_ring():
    grid = RegionGrid(64, 64, 16)
    border = set(grid.border_regions().tolist())
    assert border == set(range(16)) - {5, 6, 9, 10}


def test_bad_input():
    with pytest.raises(ValueError):
        RegionGrid(0, 10, 4)
    with pytest.raises(IndexError):
        RegionGrid(8, 8, 4).bounds(4)
    with pytest.raises(ValueError, match="does not fit"):
        RegionGrid(8, 8, 4).region_sums(np.zeros((8, 9)))
