"""What a pool state derives from its images alone: their sizes, the labeled set, the regions
(squares or superpixels) and the region index, and the views of them (pool ids and positions,
pixel totals, the pool's fingerprint). Computed once per pool and shared by every state derived
from one (``PoolState.before``, ``with_entry``), never once per round.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property

import numpy as np

from s4al_ray.pool.index import ImageSizes, RegionIndex
from s4al_ray.region_maps import RegionMaps
from s4al_ray.regions import RegionGrid
from s4al_ray.superpixels import SegmentAreas, SuperpixelRegions


class FixedPool:
    """What depends only on the images and the labeled set, shared by every state derived from
    one (``before``, ``with_entry``): computed once per pool, not per round."""

    def __init__(
        self,
        sizes: ImageSizes,
        labeled: list[str],
        maps: RegionMaps,
        segments: SegmentAreas | None,
    ) -> None:
        self.sizes, self.labeled, self.maps, self.segments = sizes, labeled, maps, segments
        self.region_size = maps.size
        self.grids: dict[tuple[int, int], RegionGrid] = {}
        if maps.superpixels != (segments is not None):
            raise ValueError("superpixel regions need their areas, and squares none")
        if segments is not None:
            self.region_index  # noqa: B018 - checks, here, that the areas tile every image

    @cached_property
    def labeled_flags(self) -> np.ndarray:
        flags = np.zeros(len(self.sizes), dtype=bool)
        flags[self.sizes.positions(self.labeled)] = True
        return flags

    @cached_property
    def pool_positions(self) -> np.ndarray:
        positions = np.flatnonzero(~self.labeled_flags)
        positions.flags.writeable = False  # handed to callers as is
        return positions

    @cached_property
    def pool_order(self) -> np.ndarray:
        """Positions in ``sizes`` of the pool images in id order: ``pool_ids[k]`` is there."""
        ids = self.sizes.ids
        order = np.asarray(sorted(self.pool_positions.tolist(), key=ids.__getitem__), np.int64)
        order.flags.writeable = False
        return order

    @cached_property
    def pool_ids(self) -> list[str]:
        ids = self.sizes.ids
        return [ids[k] for k in self.pool_order.tolist()]

    @cached_property
    def total_pixels(self) -> int:
        return self.sizes.pixels()

    @cached_property
    def labeled_image_pixels(self) -> int:
        return self.sizes.pixels(np.flatnonzero(self.labeled_flags))

    @cached_property
    def region_index(self) -> RegionIndex:
        return RegionIndex(self.sizes, self.region_size, self.segments)

    @cached_property
    def fingerprint(self) -> str:
        """Names this pool: its images and sizes, labeled set and regions (hashing 10^6 ids:
        ~0.05 s, once per process)."""
        h = hashlib.sha256(json.dumps([self.maps.kind, self.maps.size, self.maps.root]).encode())
        for text in (self.sizes.ids, self.labeled):
            h.update(b"\0" + "\n".join(text).encode())
        for array in (self.sizes.heights, self.sizes.widths):
            h.update(b"\0" + array.astype("<i8").tobytes())
        if self.segments is not None:
            h.update(b"\0" + self.segments.flat.astype("<i4").tobytes())
            h.update(self.segments.counts.astype("<i8").tobytes())
        return h.hexdigest()

    def regions(self, sample_id: str) -> RegionGrid | SuperpixelRegions:
        height, width = self.sizes[sample_id]
        if self.maps.superpixels:
            return self.maps.of(sample_id, height, width)
        key = (height, width)
        if key not in self.grids:  # one grid per image shape, not per image
            self.grids[key] = RegionGrid(height, width, self.region_size)
        return self.grids[key]

    def __getstate__(self) -> dict:
        # Lists and dicts are cheaper rebuilt than pickled; the bit layout is shared with the
        # acquired regions, so it travels once.
        keep = ("sizes", "labeled", "maps", "segments", "region_size", "region_index")
        keep += ("labeled_flags", "fingerprint")
        return {k: v for k, v in self.__dict__.items() if k in keep}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.grids = {}
