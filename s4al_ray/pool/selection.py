"""One round's selection as three flat columns, the form the pool state keeps and persists.

A round at 10^6 images selects ~5 million regions: as a dict of lists that is hundreds of MB of
Python objects and seconds to hash or serialise; as ``ids`` (sorted), ``starts`` and ``regions``
it is a few arrays, hashed, pickled and written as one parquet file in well under a second.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import ItemsView, Iterable, Iterator, Mapping
from itertools import chain

import numpy as np

Selection = dict[str, list[int]]


class RoundSelection(Mapping):
    """sample_id -> sorted region indices, canonical: images sorted by id, no image without a
    region. Duplicates are kept (validation names them), so equal inputs give equal digests."""

    def __init__(self, ids: list[str], starts: np.ndarray, regions: np.ndarray) -> None:
        self.ids = ids
        self.starts = np.asarray(starts, dtype=np.int64)
        self.regions = np.asarray(regions)
        if self.starts.shape != (len(ids) + 1,) or self.starts[-1] != self.regions.size:
            raise ValueError("selection columns do not line up")
        self._digest: str | None = None
        # Where the images sit in the pool's ImageSizes, once a pool state has validated them:
        # they travel with the committed entry, so the driver does not look up 10^6 ids again.
        self.positions: np.ndarray | None = None

    @classmethod
    def of(cls, selection: Mapping[str, Iterable[int]]) -> "RoundSelection":
        """The canonical form of any ``{sample_id: regions}`` mapping (itself when it is one)."""
        if isinstance(selection, RoundSelection):
            return selection
        items = sorted(
            ((str(k), v) for k, v in selection.items() if len(v)), key=lambda item: item[0]
        )
        ids = [k for k, _ in items]
        counts = np.fromiter((len(v) for _, v in items), dtype=np.int64, count=len(items))
        flat = np.fromiter(
            chain.from_iterable(v for _, v in items), dtype=np.int64, count=int(counts.sum())
        )
        return cls(ids, np.concatenate([[0], np.cumsum(counts)]), _sorted_within(flat, counts))

    @classmethod
    def from_pairs(cls, sample_ids, regions) -> "RoundSelection":
        """From one (sample id, region) pair per selected region, in any order: what a
        vectorised acquisition has in hand, without building a dict of lists."""
        names, owner = np.unique(np.asarray(sample_ids, dtype=str), return_inverse=True)
        counts = np.bincount(owner.reshape(-1), minlength=names.size)
        order = np.argsort(owner.reshape(-1), kind="stable")
        flat = np.asarray(regions, dtype=np.int64)[order]
        starts = np.concatenate([[0], np.cumsum(counts)])
        return cls(names.tolist(), starts, _sorted_within(flat, counts))

    @classmethod
    def from_columns(cls, ids: list[str], counts, regions) -> "RoundSelection":
        """From a delta file's columns; regions are sorted again (a file is not trusted to be)."""
        ids = list(ids)
        if any(a >= b for a, b in zip(ids, ids[1:])):
            raise ValueError("selection columns: sample ids not sorted and distinct")
        counts = np.asarray(counts, dtype=np.int64)
        flat = np.asarray(regions, dtype=np.int64)
        return cls(ids, np.concatenate([[0], np.cumsum(counts)]), _sorted_within(flat, counts))

    @property
    def counts(self) -> np.ndarray:
        """Regions per image, in ``ids`` order."""
        return np.diff(self.starts)

    @property
    def num_regions(self) -> int:
        return int(self.regions.size)

    @property
    def digest(self) -> str:
        """Hash of the canonical columns: independent of dict order, region order and empty
        images, and of the pool's image sizes (it names images by id)."""
        if self._digest is None:
            h = hashlib.sha256("\n".join(self.ids).encode())
            h.update(b"\0" + self.counts.astype("<i8").tobytes())
            h.update(self.regions.astype("<i8").tobytes())
            self._digest = h.hexdigest()[:16]
        return self._digest

    # -- the Mapping interface, for code that reads a selection as a dict
    def __getitem__(self, sample_id: str) -> list[int]:
        k = bisect_left(self.ids, sample_id)
        if k == len(self.ids) or self.ids[k] != sample_id:
            raise KeyError(sample_id)
        return self.regions[self.starts[k] : self.starts[k + 1]].tolist()

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def items(self):
        return _Items(self)

    def __eq__(self, other) -> bool:
        if isinstance(other, RoundSelection):
            return (
                self.ids == other.ids
                and np.array_equal(self.starts, other.starts)
                and np.array_equal(self.regions, other.regions)
            )
        return Mapping.__eq__(self, other)

    __hash__ = None  # compared by value, like the dict it stands for

    def __repr__(self) -> str:
        return f"RoundSelection({len(self.ids)} images, {self.num_regions} regions)"

    def __getstate__(self) -> dict:
        return {
            "ids": self.ids,
            "starts": self.starts,
            "regions": self.regions,
            "positions": self.positions,
        }

    def __setstate__(self, state: dict) -> None:
        self.ids, self.starts, self.regions = state["ids"], state["starts"], state["regions"]
        self.positions = state.get("positions")
        self._digest = None


class _Items(ItemsView):
    """Items in id order, sliced from the columns at once (not one lookup per key)."""

    def __iter__(self) -> Iterator[tuple[str, list[int]]]:
        sel = self._mapping
        parts = np.split(sel.regions, sel.starts[1:-1]) if sel.ids else []
        for sample_id, regions in zip(sel.ids, parts):
            yield sample_id, regions.tolist()


def _sorted_within(flat: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``flat`` sorted inside each image's run (runs given by ``counts``), as int32 when it
    fits: one sort of ``run * span + value`` keys instead of a Python sort per image."""
    if flat.size == 0:
        return flat.astype(np.int32)
    lo, hi = int(flat.min()), int(flat.max())
    span = hi - lo + 1
    run = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    if span * counts.size < 2**62:
        keys = np.sort(run * span + (flat - lo))
        out = keys - run * span + lo
    else:  # absurd region values (validation refuses them): an exact two-key sort
        out = flat[np.lexsort((flat, run))]
    small = lo >= np.iinfo(np.int32).min and hi <= np.iinfo(np.int32).max
    return out.astype(np.int32) if small else out


def selection_digest(selection: Mapping[str, Iterable[int]]) -> str:
    return RoundSelection.of(selection).digest
