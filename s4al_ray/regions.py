"""Square region grid over an image, exact when the region size does not divide the image.

Regions are numbered row-major. Edge regions are cut at the image border and counted at their
true pixel size, so a budget in pixels matches the pixels an annotator actually labels (the
reference code silently dropped or mis-sized them).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class RegionGrid:
    height: int
    width: int
    size: int

    def __post_init__(self) -> None:
        if min(self.height, self.width, self.size) <= 0:
            raise ValueError(f"region grid needs positive sizes, got {self}")

    @property
    def rows(self) -> int:
        return -(-self.height // self.size)

    @property
    def cols(self) -> int:
        return -(-self.width // self.size)

    @property
    def num_regions(self) -> int:
        return self.rows * self.cols

    def bounds(self, index: int) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of region ``index``, half-open."""
        if not 0 <= index < self.num_regions:
            raise IndexError(f"region {index} outside a grid of {self.num_regions}")
        row, col = divmod(int(index), self.cols)
        y0, x0 = row * self.size, col * self.size
        return y0, min(y0 + self.size, self.height), x0, min(x0 + self.size, self.width)

    @cached_property
    def areas(self) -> np.ndarray:
        """True pixel count of every region, shape ``(num_regions,)``."""
        heights = np.minimum(self.size, self.height - np.arange(self.rows) * self.size)
        widths = np.minimum(self.size, self.width - np.arange(self.cols) * self.size)
        return np.outer(heights, widths).reshape(-1).astype(np.int64)

    def region_sums(self, pixel_map: np.ndarray) -> np.ndarray:
        """Sum of ``pixel_map`` (H, W) inside each region, vectorised by zero-padding to whole
        blocks (padding adds nothing to a sum)."""
        if pixel_map.shape != (self.height, self.width):
            raise ValueError(f"map of shape {pixel_map.shape} does not fit grid {self}")
        padded = np.zeros((self.rows * self.size, self.cols * self.size), dtype=np.float64)
        padded[: self.height, : self.width] = pixel_map
        blocks = padded.reshape(self.rows, self.size, self.cols, self.size)
        return blocks.sum(axis=(1, 3)).reshape(-1)

    def region_means(self, pixel_map: np.ndarray) -> np.ndarray:
        return self.region_sums(pixel_map) / self.areas

    def region_class_counts(self, label: np.ndarray, num_classes: int, skip: np.ndarray):
        """(num_regions, num_classes) pixel counts of each class of ``label`` (H, W) per region,
        leaving out the pixels where ``skip`` (H, W) is true; one bincount over the image."""
        if label.shape != (self.height, self.width):
            raise ValueError(f"map of shape {label.shape} does not fit grid {self}")
        rows = np.arange(self.height) // self.size
        cols = np.arange(self.width) // self.size
        region = (rows[:, None] * self.cols + cols[None, :]).astype(np.int64)
        keys = (region * num_classes + label.astype(np.int64))[~skip]
        counts = np.bincount(keys, minlength=self.num_regions * num_classes)
        return counts.reshape(self.num_regions, num_classes)

    def mask(self, indices) -> np.ndarray:
        """Boolean (H, W) mask covering the given regions."""
        cells = np.zeros(self.num_regions, dtype=bool)
        cells[np.asarray(list(indices), dtype=np.int64)] = True
        grid = cells.reshape(self.rows, self.cols)
        full = np.repeat(np.repeat(grid, self.size, axis=0), self.size, axis=1)
        return full[: self.height, : self.width]

    def border_regions(self) -> np.ndarray:
        """Indices of the outer ring of regions (the S4AL+ code never acquires these)."""
        rows, cols = np.divmod(np.arange(self.num_regions), self.cols)
        ring = (rows == 0) | (cols == 0) | (rows == self.rows - 1) | (cols == self.cols - 1)
        return np.flatnonzero(ring)
