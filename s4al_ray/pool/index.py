"""Compact per-image tables of the pool: image sizes, where each image's regions sit in one flat
bit array, and the acquired regions as those bits.

A million 2048x1024 images with 64-px regions have 512 million regions: one bit each is 64 MB,
where the same set as a dict of lists costs gigabytes and seconds to build. Every lookup here is
an array index: per image O(its regions), per selection O(its regions).
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from s4al_ray.superpixels import SegmentAreas

# Images whose bits are unpacked at once when all acquired regions are listed (bounds the
# temporary: ~512 regions an image, so ~32 MB of booleans).
_CHUNK_IMAGES = 65536


class ImageSizes(Mapping):
    """sample_id -> (height, width) of every train image, as columns. The manifest is the source
    of truth: the pool state is handed this, never persists it."""

    def __init__(self, ids: Iterable[str], heights, widths) -> None:
        self.ids = [str(s) for s in ids]
        self.heights = np.asarray(heights, dtype=np.int64).reshape(-1)
        self.widths = np.asarray(widths, dtype=np.int64).reshape(-1)
        if not len(self.ids) == self.heights.size == self.widths.size:
            raise ValueError("image sizes: ids, heights and widths differ in length")
        if self.ids and min(self.heights.min(), self.widths.min()) <= 0:
            raise ValueError("image sizes must be positive")
        self._index: dict[str, int] | None = None
        self._arrow_ids = None  # ``ids`` as an arrow array, for ``positions``

    @classmethod
    def of(cls, sizes: "ImageSizes | Mapping") -> "ImageSizes":
        """From ``{sample_id: [height, width]}`` (or itself)."""
        if isinstance(sizes, ImageSizes):
            return sizes
        ids = list(sizes)
        hw = np.asarray([sizes[s] for s in ids], dtype=np.int64).reshape(len(ids), 2)
        return cls(ids, hw[:, 0], hw[:, 1])

    @classmethod
    def of_rows(cls, rows: list[dict]) -> "ImageSizes":
        """From manifest rows (``sample_id``, ``height``, ``width``), in their order."""
        return cls(
            [r["sample_id"] for r in rows], [r["height"] for r in rows], [r["width"] for r in rows]
        )

    @property
    def index(self) -> dict[str, int]:
        """sample_id -> position; built on first use (not pickled: rebuilt where it is used)."""
        if self._index is None:
            index = dict(zip(self.ids, range(len(self.ids))))
            if len(index) != len(self.ids):
                raise ValueError("image sizes: a sample id appears twice")
            self._index = index
        return self._index

    def positions(self, sample_ids: list[str], hint: np.ndarray | None = None) -> np.ndarray:
        """Positions of ``sample_ids``; KeyError names the first that is not a train image.
        One hashed lookup in arrow (a round's ~10^6 ids: ~0.3 s, against 0.6 s through the
        dict), which needs no id -> position dict in this process at all. ``hint``: where the
        caller believes they are (a selection made from this pool), checked in one comparison
        (~0.08 s for 10^6 ids) and used when right."""
        if self._arrow_ids is None:
            self._arrow_ids = pa.array(self.ids, pa.string())
        wanted = pa.array(sample_ids, pa.string())
        if hint is not None and self._holds(wanted, np.asarray(hint)):
            return np.asarray(hint, dtype=np.int64)
        found = pc.index_in(wanted, value_set=self._arrow_ids)
        if found.null_count:
            raise KeyError(sample_ids[int(np.argmax(found.is_null().to_numpy(False)))])
        return found.to_numpy().astype(np.int64)

    def _holds(self, wanted: pa.Array, hint: np.ndarray) -> bool:
        """Whether image ``hint[k]`` is ``wanted[k]`` for every k."""
        if hint.shape != (len(wanted),) or hint.dtype.kind not in "iu" or wanted.null_count:
            return False
        if hint.size and (hint.min() < 0 or hint.max() >= len(self.ids)):
            return False
        return bool(pc.all(pc.equal(self._arrow_ids.take(pa.array(hint)), wanted)).as_py())

    def pixels(self, positions: np.ndarray | None = None) -> int:
        h, w = (
            (self.heights, self.widths)
            if positions is None
            else (
                self.heights[positions],
                self.widths[positions],
            )
        )
        return int((h * w).sum())

    def __getitem__(self, sample_id: str) -> tuple[int, int]:
        k = self.index[sample_id]
        return int(self.heights[k]), int(self.widths[k])

    def __contains__(self, sample_id) -> bool:
        return sample_id in self.index

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __eq__(self, other) -> bool:
        if isinstance(other, ImageSizes):
            return (
                self.ids == other.ids
                and np.array_equal(self.heights, other.heights)
                and np.array_equal(self.widths, other.widths)
            )
        return Mapping.__eq__(self, other)

    __hash__ = None

    def __repr__(self) -> str:
        return f"ImageSizes({len(self.ids)} images)"

    def __getstate__(self) -> dict:
        return {"ids": self.ids, "heights": self.heights, "widths": self.widths}

    def __setstate__(self, state: dict) -> None:
        self.ids, self.heights, self.widths = state["ids"], state["heights"], state["widths"]
        self._index = self._arrow_ids = None


class RegionIndex:
    """Where every image's regions sit in one bit array (each image starts on a byte), and their
    true sizes, for images of ``sizes`` cut into ``region_size`` squares (row-major, edge
    regions cut at the border: the numbering and areas of ``regions.RegionGrid``), or, given
    ``segments``, into superpixels of those areas (``superpixels.SegmentAreas``)."""

    def __init__(
        self, sizes: ImageSizes, region_size: int, segments: SegmentAreas | None = None
    ) -> None:
        self.region_size = int(region_size)
        self.heights, self.widths = sizes.heights, sizes.widths
        self.segments = segments
        if segments is None:
            self.rows = -(-sizes.heights // self.region_size)
            self.cols = -(-sizes.widths // self.region_size)
            self.num_regions = self.rows * self.cols
            # Per image: whether the region size leaves cut regions at its bottom or right edge.
            size = self.region_size
            self.cut_edges = (self.heights % size != 0) | (self.widths % size != 0)
        else:
            _check_segments(sizes, segments)
            self.num_regions = segments.counts
            self.cut_edges = np.ones(len(sizes), dtype=bool)  # every area is its own
        self.byte_start = np.concatenate([[0], np.cumsum((self.num_regions + 7) // 8)])

    @property
    def num_bytes(self) -> int:
        return int(self.byte_start[-1])

    def bits(self, images: np.ndarray, regions: np.ndarray) -> np.ndarray:
        """Bit positions of (image position, region) pairs."""
        return self.byte_start[images] * 8 + regions

    def areas(self, images: np.ndarray, regions: np.ndarray) -> np.ndarray:
        """True pixel count of each (image position, region) pair."""
        if self.segments is not None:
            return self.segments.areas(images, regions)
        size = self.region_size
        row, col = np.divmod(regions, self.cols[images])
        height = np.minimum(size, self.heights[images] - row * size)
        width = np.minimum(size, self.widths[images] - col * size)
        return height * width

    def pixels(self, images: np.ndarray, regions: np.ndarray) -> int:
        """Total true pixel count of (image position, region) pairs: only the pairs of images
        with cut edge regions are measured one by one (at 5 million regions a round, the
        temporaries of ``areas`` over all of them cost a second)."""
        cut = self.cut_edges[images]
        full = (images.size - int(np.count_nonzero(cut))) * self.region_size**2
        if not cut.any():
            return full
        return full + int(self.areas(images[cut], regions[cut]).sum())


def _check_segments(sizes: ImageSizes, segments: SegmentAreas) -> None:
    """Superpixel areas must tile each image exactly: the budget counts them as its pixels."""
    if segments.counts.size != len(sizes):
        raise ValueError(f"superpixels of {segments.counts.size} images for {len(sizes)} images")
    k = segments.first_untiled(sizes.heights, sizes.widths)
    if k is not None:
        raise ValueError(
            f"{sizes.ids[k]}: its superpixels cover {int(segments.image_pixels()[k])} px, "
            f"not its {int(sizes.heights[k])}x{int(sizes.widths[k])}"
        )


class AcquiredRegions(Mapping):
    """sample_id -> sorted acquired region indices, read from one bit per region; images
    without an acquired region are absent. Read-only for its users: the pool state copies it
    before a commit changes a copy someone holds."""

    def __init__(
        self, sizes: ImageSizes, index: RegionIndex, bits: np.ndarray, counts: np.ndarray
    ) -> None:
        self.sizes, self.index = sizes, index
        self.bits, self.counts = bits, counts

    @classmethod
    def empty(cls, sizes: ImageSizes, index: RegionIndex) -> "AcquiredRegions":
        return cls(
            sizes, index, np.zeros(index.num_bytes, np.uint8), np.zeros(len(sizes), np.int64)
        )

    def copy(self) -> "AcquiredRegions":
        return AcquiredRegions(self.sizes, self.index, self.bits.copy(), self.counts.copy())

    def contains(self, bits: np.ndarray) -> np.ndarray:
        """Which of these bit positions are set."""
        return ((self.bits[bits >> 3] >> (bits & 7).astype(np.uint8)) & 1).astype(bool)

    def add(self, bits: np.ndarray, images: np.ndarray, counts: np.ndarray) -> None:
        """Set ``bits`` (new ones: checked by the caller) of ``counts`` regions per image."""
        self.counts[images] += counts  # images of one selection are distinct
        if bits.size == 0:
            return
        if not (bits[1:] > bits[:-1]).all():
            # A selection's regions come in id order, which need not be the sizes' order.
            bits = np.sort(bits)
        byte = bits >> 3
        first = np.flatnonzero(np.concatenate([[True], byte[1:] != byte[:-1]]))
        # One OR per byte touched (ufunc.at, one per bit, took 0.3 s for a 5M-region round).
        values = np.left_shift(1, (bits & 7).astype(np.uint8), dtype=np.uint8)
        self.bits[byte[first]] |= np.bitwise_or.reduceat(values, first)

    def regions_at(self, position: int) -> np.ndarray:
        """The acquired region indices of the image at ``position``: O(its regions)."""
        if not self.counts[position]:
            return np.empty(0, np.int64)
        start, stop = self.index.byte_start[position], self.index.byte_start[position + 1]
        cells = np.unpackbits(self.bits[start:stop], bitorder="little")
        return np.flatnonzero(cells[: self.index.num_regions[position]])

    def __getitem__(self, sample_id: str) -> list[int]:
        position = self.sizes.index.get(sample_id)
        if position is None or not self.counts[position]:
            raise KeyError(sample_id)
        return self.regions_at(position).tolist()

    def __contains__(self, sample_id) -> bool:
        position = self.sizes.index.get(sample_id)
        return position is not None and bool(self.counts[position])

    def __iter__(self) -> Iterator[str]:
        ids = self.sizes.ids
        return (ids[k] for k in np.flatnonzero(self.counts))

    def __len__(self) -> int:
        return int(np.count_nonzero(self.counts))

    def items(self):
        return _AcquiredItems(self)

    def lists(self, sample_ids: list[str]) -> list[list[int]]:
        """The acquired regions of each of ``sample_ids`` ([] for none), for a whole pool at
        once: one vectorised pass over the bits, not one lookup per image."""
        found = dict(self.items())
        return [found.get(s, []) for s in sample_ids]

    def __repr__(self) -> str:
        return f"AcquiredRegions({len(self)} images, {int(self.counts.sum())} regions)"

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(image positions, starts, regions) of every image with acquired regions, a block of
        images at a time, unpacked with one vectorised pass per block."""
        index = self.index
        with_regions = np.flatnonzero(self.counts)
        for lo in range(0, with_regions.size, _CHUNK_IMAGES):
            images = with_regions[lo : lo + _CHUNK_IMAGES]
            first, last = int(images[0]), int(images[-1])
            byte0 = index.byte_start[first]
            cells = np.unpackbits(self.bits[byte0 : index.byte_start[last + 1]], bitorder="little")
            found = np.flatnonzero(cells) + byte0 * 8
            owner = np.searchsorted(index.byte_start[first : last + 2] * 8, found, "right")
            owner += first - 1
            regions = found - index.byte_start[owner] * 8
            starts = np.searchsorted(owner, images)
            yield images, np.append(starts, found.size), regions


class _AcquiredItems(ItemsView):
    def __iter__(self) -> Iterator[tuple[str, list[int]]]:
        ids = self._mapping.sizes.ids
        for images, starts, regions in self._mapping.chunks():
            for k, position in enumerate(images.tolist()):
                yield ids[position], regions[starts[k] : starts[k + 1]].tolist()
