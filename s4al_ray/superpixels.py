"""Superpixel regions: SLIC segments as the unit of labeling, with the geometry of ``RegionGrid``.

A square region cuts across object borders, so an annotator labels parts of several objects
and a score averages over them. SLIC superpixels (scikit-image) follow colour edges instead:
a region is, mostly, one piece of one object. :class:`SuperpixelRegions` answers everything a
``RegionGrid`` answers (true areas, masks, per-region sums and class counts, the border ring)
from a segment map, so budgets count the true pixels of each superpixel.

The segment map of an image is a pure function of its pixels and the settings
(:func:`slic_segments`): computed once per image and stored beside the run, every stage that
needs it reads the same map.

``acquisition.regions=slic`` makes them the unit of the round loop (``region_maps.py`` stores
the maps and hands every stage an image's regions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

# SLIC's colour-against-space weight: scikit-image's default for RGB in [0, 255] (Achanta et
# al.'s 10); higher gives squarer, less edge-following segments.
COMPACTNESS = 10.0
# Segments smaller than this share of region_size^2 are merged into a neighbour. scikit-image's
# default (0.5) merges so many that 96x128 street scenes asked for 31 segments got 21 (~585 px
# each, measured over 40 benchmark images); 0.2 gives 27 (~455 px) with none under ~80 px, so
# a region is about the size asked for and still big enough to label.
MIN_SIZE_FACTOR = 0.2


def slic_segments(image: np.ndarray, region_size: int, compactness: float = COMPACTNESS):
    """(H, W) int32 segment ids 0..R-1 of an (H, W, 3) uint8 image: SLIC with about one
    segment per ``region_size``^2 pixels (each connected, ids in raster order of first pixel),
    so a budget that fits a number of squares fits about as many superpixels."""
    from skimage.segmentation import slic

    height, width = image.shape[:2]
    segments = slic(
        image,
        n_segments=segment_count(height, width, region_size),
        compactness=compactness,
        start_label=0,
        enforce_connectivity=True,
        min_size_factor=MIN_SIZE_FACTOR,
        channel_axis=-1,
    )
    # Raster order of first appearance: the numbering depends on the map, not on SLIC's seeds,
    # and has no gaps.
    labels, first = np.unique(segments.ravel(), return_index=True)
    rank = np.empty(labels.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(labels.size)
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    lookup[labels] = rank
    return lookup[segments].astype(np.int32)


def segment_count(height: int, width: int, region_size: int) -> int:
    """How many segments SLIC is asked for on an image of that size."""
    return max(1, round(height * width / region_size**2))


@dataclass(frozen=True, eq=False)
class SuperpixelRegions:
    """Regions given by a segment map: ``segments`` (H, W) ids 0..R-1, every id present."""

    segments: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        seg = self.segments
        if seg.ndim != 2 or seg.size == 0 or seg.min() < 0:
            raise ValueError("a segment map is a non-empty (H, W) array of ids from 0")
        if np.bincount(seg.ravel()).min() == 0:
            raise ValueError("a segment map must use every id from 0 to its largest")

    @property
    def height(self) -> int:
        return int(self.segments.shape[0])

    @property
    def width(self) -> int:
        return int(self.segments.shape[1])

    @property
    def num_regions(self) -> int:
        return int(self.segments.max()) + 1

    @cached_property
    def _flat(self) -> np.ndarray:
        return self.segments.ravel().astype(np.int64)

    @cached_property
    def areas(self) -> np.ndarray:
        """True pixel count of every region, shape ``(num_regions,)``."""
        return np.bincount(self._flat, minlength=self.num_regions).astype(np.int64)

    def _fits(self, pixel_map: np.ndarray) -> None:
        if pixel_map.shape != self.segments.shape:
            raise ValueError(
                f"map of shape {pixel_map.shape} does not fit segments of {self.segments.shape}"
            )

    def region_sums(self, pixel_map: np.ndarray) -> np.ndarray:
        self._fits(pixel_map)
        weights = pixel_map.ravel().astype(np.float64)
        return np.bincount(self._flat, weights=weights, minlength=self.num_regions)

    def region_means(self, pixel_map: np.ndarray) -> np.ndarray:
        return self.region_sums(pixel_map) / self.areas

    def region_class_counts(self, label: np.ndarray, num_classes: int, skip: np.ndarray):
        """(num_regions, num_classes) pixel counts of each class of ``label`` per region,
        leaving out the pixels where ``skip`` is true; one bincount over the image."""
        self._fits(label)
        keys = (self._flat * num_classes + label.ravel().astype(np.int64))[~skip.ravel()]
        counts = np.bincount(keys, minlength=self.num_regions * num_classes)
        return counts.reshape(self.num_regions, num_classes)

    def mask(self, indices) -> np.ndarray:
        """Boolean (H, W) mask covering the given regions."""
        chosen = np.zeros(self.num_regions, dtype=bool)
        chosen[np.asarray(list(indices), dtype=np.int64)] = True
        return chosen[self.segments]

    def labels(self, indices) -> np.ndarray:
        """(H, W) int: the segment id inside the given regions, -1 elsewhere (``region_edges``
        outlines each of them)."""
        return np.where(self.mask(indices), self.segments.astype(np.int64), -1)

    def border_regions(self) -> np.ndarray:
        """Indices of the regions touching the image border."""
        seg = self.segments
        edge = np.concatenate([seg[0], seg[-1], seg[:, 0], seg[:, -1]])
        return np.unique(edge).astype(np.int64)

    def bounds(self, index: int) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of region ``index``'s bounding box, half-open."""
        if not 0 <= index < self.num_regions:
            raise IndexError(f"region {index} outside a map of {self.num_regions}")
        return tuple(int(v) for v in self._boxes[:, int(index)])

    @cached_property
    def _boxes(self) -> np.ndarray:
        """(4, R): every region's half-open box, from one pass over the map (a query boxes
        many regions of an image)."""
        rows, cols = np.indices(self.segments.shape).reshape(2, -1)
        boxes = np.empty((4, self.num_regions), dtype=np.int64)
        boxes[0], boxes[2] = self.height, self.width
        boxes[1] = boxes[3] = 0
        np.minimum.at(boxes[0], self._flat, rows)
        np.maximum.at(boxes[1], self._flat, rows + 1)
        np.minimum.at(boxes[2], self._flat, cols)
        np.maximum.at(boxes[3], self._flat, cols + 1)
        return boxes


@dataclass(frozen=True, eq=False)
class SegmentAreas:
    """The true pixel count of every superpixel of every image of a pool, flat: image ``k``'s
    regions are ``flat[offsets[k]:offsets[k + 1]]``. Int32, so a pool costs 4 bytes a region."""

    counts: np.ndarray  # regions per image, in the pool's image order
    flat: np.ndarray  # every region's area, image after image

    @classmethod
    def of(cls, per_image: list[np.ndarray]) -> "SegmentAreas":
        counts = np.asarray([a.size for a in per_image], dtype=np.int64)
        flat = np.concatenate(per_image).astype(np.int32) if per_image else np.zeros(0, np.int32)
        return cls(counts, flat)

    @cached_property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    @property
    def total(self) -> int:
        return int(self.flat.size)

    def first_untiled(self, heights: np.ndarray, widths: np.ndarray) -> int | None:
        """The first image whose superpixels do not cover exactly its height x width pixels
        (budgets count them as its pixels), or None."""
        wrong = np.flatnonzero(self.image_pixels() != np.asarray(heights) * np.asarray(widths))
        return int(wrong[0]) if wrong.size else None

    def image_pixels(self) -> np.ndarray:
        """Pixels covered per image (must equal its height x width)."""
        owner = np.repeat(np.arange(self.counts.size), self.counts)
        return np.bincount(owner, weights=self.flat, minlength=self.counts.size).astype(np.int64)

    def areas(self, images: np.ndarray, regions: np.ndarray) -> np.ndarray:
        """Area of each (image position, region) pair."""
        return self.flat[self.offsets[images] + regions].astype(np.int64)

    def per_image(self) -> list[np.ndarray]:
        return np.split(self.flat, self.offsets[1:-1])


def region_edges(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of the regions in ``labels`` (an id per pixel, -1 outside every
    region shown) with a 4-neighbour of another id or the image's edge: a one-pixel outline of
    each region, inside it, so touching regions stay apart."""
    padded = np.pad(labels.astype(np.int64), 1, constant_values=-1)
    centre = padded[1:-1, 1:-1]
    same = (
        (padded[:-2, 1:-1] == centre)
        & (padded[2:, 1:-1] == centre)
        & (padded[1:-1, :-2] == centre)
        & (padded[1:-1, 2:] == centre)
    )
    return (centre >= 0) & ~same
