"""Superpixel regions: SLIC segments with the geometry of the square grid, exact at true size."""

from __future__ import annotations

import numpy as np
import pytest

from s4al_ray.regions import RegionGrid
from s4al_ray.superpixels import SuperpixelRegions, slic_segments


def _two_colour_image(height=48, width=64) -> np.ndarray:
    """Left of a slanted edge dark red, right light green, with a little noise."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[:height, :width]
    right = xs > 20 + ys // 2
    image = np.where(right[..., None], [40, 200, 60], [150, 20, 30]).astype(np.int64)
    return np.clip(image + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8), right


def test_slic_segments_follow_colour_edges_at_about_the_square_count():
    image, right = _two_colour_image()
    segments = slic_segments(image, region_size=12)
    regions = SuperpixelRegions(segments)
    # about one segment per 12x12 square (48 * 64 / 144 = 21)
    assert 10 <= regions.num_regions <= 40
    # every superpixel lies on one side of the edge, where a square grid straddles it
    sides = regions.region_means(right.astype(np.float64))
    assert np.all((sides < 0.05) | (sides > 0.95))
    grid_sides = RegionGrid(48, 64, 12).region_means(right.astype(np.float64))
    assert np.any((grid_sides > 0.05) & (grid_sides < 0.95))
    # a pure function of the pixels, numbered in raster order of first pixel without gaps
    assert np.array_equal(slic_segments(image, region_size=12), segments)
    first = [int(np.flatnonzero(segments.ravel() == k)[0]) for k in range(regions.num_regions)]
    assert first == sorted(first)


def test_superpixel_geometry_is_exact_at_true_sizes():
    rng = np.random.default_rng(1)
    patches = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)  # colour patches of 8x8 px
    image = np.kron(patches, np.ones((8, 8, 1), np.uint8))[:37, :41]
    segments = slic_segments(image, region_size=8)
    regions = SuperpixelRegions(segments)
    assert regions.num_regions > 10
    assert regions.areas.sum() == 37 * 41
    assert regions.areas.tolist() == [
        int((segments == k).sum()) for k in range(regions.num_regions)
    ]
    values = rng.random((37, 41))
    expected = [values[segments == k].sum() for k in range(regions.num_regions)]
    assert np.allclose(regions.region_sums(values), expected)
    chosen = [0, 3, regions.num_regions - 1]
    assert np.array_equal(regions.mask(chosen), np.isin(segments, chosen))
    assert regions.mask(chosen).sum() == regions.areas[chosen].sum()
    label = rng.integers(0, 4, (37, 41))
    skip = rng.random((37, 41)) < 0.3
    counts = regions.region_class_counts(label, 4, skip)
    for k in (0, 5):
        inside = (segments == k) & ~skip
        assert counts[k].tolist() == [int((inside & (label == c)).sum()) for c in range(4)]
    border = set(regions.border_regions().tolist())
    edge = set(
        np.concatenate([segments[0], segments[-1], segments[:, 0], segments[:, -1]]).tolist()
    )
    assert border == edge
    y0, y1, x0, x1 = regions.bounds(0)
    assert (segments[y0:y1, x0:x1] == 0).sum() == regions.areas[0]


def test_a_segment_map_with_gaps_or_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="every id"):
        SuperpixelRegions(np.array([[0, 2], [2, 0]]))
    regions = SuperpixelRegions(np.array([[0, 1], [1, 0]]))
    with pytest.raises(ValueError, match="does not fit"):
        regions.region_sums(np.zeros((3, 2)))
