"""The round's global cut-off: which candidates the driver need never see.

At 1% of a 10^6-image pool per round the budget takes ~5 million of 512 million regions, and a
teacher block of 64 images holds far less than the budget, so a block cannot cut its own
candidates down (``acquisition.could_be_chosen`` keeps them all). Instead each block also writes
a histogram of its candidates (:class:`CandidateHistogram`: regions per score bin and region
area, a few thousand numbers); the driver sums them (:class:`HistogramSum`), derives from the
sum the lowest score bin each region area could still be chosen from
(:meth:`CandidateHistogram.cutoff`), and the candidates are filtered against that
(:meth:`Cutoff.keep`) where they lie, so only about the budget's worth (plus one score bin)
reaches the driver. The selection stays exactly that of one global ranking: the cut-off only
drops regions the greedy fill could not take. With class-balanced selection each group of
regions is a greedy fill of at most the budget, so the same cut-off is found per group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from s4al_ray.acquisition import Candidates
from s4al_ray.acquisition_order import score_order_key

# A score bin is the top 16 bits of the score's order-preserving integer key (sign, exponent,
# 7 mantissa bits): 2^-7 relative resolution, so the bin the budget ends in holds well under 1%
# of a pool, and a block's histogram has at most a few thousand non-empty bins.
_KEPT_BITS = 16
_AREA_BITS = 32  # histogram keys: group << 48 | bin << 32 | area (an area is far below 2^32)
_GROUP_SHIFT = _AREA_BITS + _KEPT_BITS
# Up to this many distinct region areas in a histogram are summed one mask each, more after one
# sort by area (superpixels: an area per few regions).
_MASKED_AREAS = 8


def score_bins(score: np.ndarray) -> np.ndarray:
    """Bins of float32 scores, monotone: a higher score never lands in a lower bin. The top bits
    of the ranking's own key (``acquisition_order.score_order_key``), so NaN and -0.0 fall where
    the ranking puts them."""
    return (score_order_key(score) >> (32 - _KEPT_BITS)).astype(np.int64)


@dataclass(frozen=True)
class CandidateHistogram:
    """How many candidate regions fall in each (group, score bin, area): sorted distinct
    ``keys`` (``group << 48 | bin << 32 | area``) and their ``counts``."""

    keys: np.ndarray  # int64
    counts: np.ndarray  # int64

    @staticmethod
    def keys_of(c: Candidates) -> np.ndarray:
        """Each candidate's histogram key."""
        keys = score_bins(c.score) << _AREA_BITS | c.area.astype(np.int64)
        return keys if c.group is None else keys | c.group.astype(np.int64) << _GROUP_SHIFT

    @staticmethod
    def of(c: Candidates) -> "CandidateHistogram":
        distinct, counts = np.unique(CandidateHistogram.keys_of(c), return_counts=True)
        return CandidateHistogram(distinct, counts.astype(np.int64))

    @property
    def bins(self) -> np.ndarray:
        return (self.keys >> _AREA_BITS) & ((1 << _KEPT_BITS) - 1)

    @property
    def areas(self) -> np.ndarray:
        return self.keys & ((1 << _AREA_BITS) - 1)

    @property
    def groups(self) -> np.ndarray:
        return self.keys >> _GROUP_SHIFT

    @property
    def group_areas(self) -> np.ndarray:
        """``group << 32 | area``: the keys a cut-off is found for."""
        return self.groups << _AREA_BITS | self.areas

    @property
    def regions(self) -> int:
        return int(self.counts.sum())

    def cutoff(self, budget_pixels: int) -> "Cutoff":
        """The lowest bin each (group, area) could be chosen from: ``group_cutoff`` per group."""
        groups = self.groups
        if groups.size == 0 or groups[-1] == groups[0]:  # sorted keys: one group
            return self.group_cutoff(budget_pixels)
        parts = []
        for group in np.unique(groups).tolist():
            mine = groups == group
            cut = CandidateHistogram(self.keys[mine], self.counts[mine]).group_cutoff(budget_pixels)
            parts.append(cut)
        return Cutoff(
            np.concatenate([p.areas for p in parts]),
            np.concatenate([p.lowest_bin for p in parts]),
        )

    def group_cutoff(self, budget_pixels: int) -> "Cutoff":
        """The lowest bin each area of this histogram's one group could be chosen from by the
        greedy fill of the budget.

        Regions are taken best first while they fit. Let B be the highest bin at which the
        pixels of the bins from the top reach the budget (all of them cannot be taken), so the
        first region skipped for want of room lies in a bin >= B and is at most ``limit``, the
        largest area there; what is left after it is below ``limit``. From then on a region of
        area ``a`` is taken exactly while ``a`` fits, so the regions of area ``a`` chosen below B
        are the first of them, at most ``(limit - 1) // a``: keeping the bins down to where that
        many are reached keeps every region the fill can take."""
        bins, areas, counts = self.bins, self.areas, self.counts
        group = int(self.groups[0]) << _AREA_BITS if self.keys.size else 0
        fits = areas <= budget_pixels
        bins, areas, counts = bins[fits], areas[fits], counts[fits]
        if budget_pixels <= 0 or bins.size == 0:
            return Cutoff(np.empty(0, np.int64), np.empty(0, np.int64))
        distinct_areas = np.unique(areas)
        order = np.argsort(-bins, kind="stable")
        bins, areas, counts = bins[order], areas[order], counts[order]
        reached = np.searchsorted(np.cumsum(counts * areas), budget_pixels)
        if reached >= bins.size:  # the budget takes every candidate
            every = np.full(distinct_areas.size, np.iinfo(np.int64).min)
            return Cutoff(group | distinct_areas, every)
        boundary = bins[reached]
        limit = int(areas[bins >= boundary].max())
        lowest = np.full(distinct_areas.size, boundary, dtype=np.int64)
        for k, area in enumerate(distinct_areas.tolist()):
            most = (limit - 1) // area
            if most == 0:
                continue
            below = (areas == area) & (bins < boundary)
            cum = np.cumsum(counts[below])
            at = np.searchsorted(cum, most)
            lowest[k] = bins[below][min(at, cum.size - 1)] if cum.size else boundary
        return Cutoff(group | distinct_areas, lowest)


class HistogramSum:
    """Sums block histograms as they stream in, in dense per-(group, area) arrays of every bin:
    O(the histogram entries) whatever their number (the blocks of a 10^6-image pool hand over
    ~10^7), where re-merging sorted keys per block would cost O(blocks x bins)."""

    def __init__(self) -> None:
        self.by_area: dict[int, np.ndarray] = {}  # group << 32 | area -> counts per bin

    def add(self, hist: CandidateHistogram) -> None:
        """Add a histogram; its keys may repeat (a batch of blocks' histograms, concatenated)."""
        areas, bins, counts = hist.group_areas, hist.bins, hist.counts
        if areas.size == 0:
            return
        distinct = pc.unique(pa.array(areas)).to_numpy()  # hashed: no sort of the entries
        if distinct.size <= _MASKED_AREAS:  # squares: the full size and a few cut edges
            for area in distinct.tolist():
                mine = areas == area
                self._add_area(area, bins[mine], counts[mine])
            return
        order = np.argsort(areas, kind="stable")
        areas, bins, counts = areas[order], bins[order], counts[order]
        starts = np.flatnonzero(np.r_[True, areas[1:] != areas[:-1]])
        for lo, hi in zip(starts.tolist(), [*starts[1:].tolist(), areas.size]):
            self._add_area(int(areas[lo]), bins[lo:hi], counts[lo:hi])

    def _add_area(self, area: int, bins: np.ndarray, counts: np.ndarray) -> None:
        dense = self.by_area.get(area)
        if dense is None:
            dense = self.by_area[area] = np.zeros(1 << _KEPT_BITS, np.int64)
        if bins.size < 4096:  # superpixels: many areas of a few entries each
            np.add.at(dense, bins, counts)
            return
        # bincount sums in float64, exact for counts below 2^53 (a pool has ~10^9 regions);
        # np.add.at, one scatter per entry, took 0.9 s for a 10^6-image round's 16M entries.
        dense += np.bincount(bins, weights=counts, minlength=dense.size).astype(np.int64)

    def result(self) -> CandidateHistogram:
        keys, counts = [], []
        for group_area in sorted(self.by_area):
            dense = self.by_area[group_area]
            bins = np.flatnonzero(dense)
            group, area = divmod(group_area, 1 << _AREA_BITS)
            keys.append(group << _GROUP_SHIFT | bins.astype(np.int64) << _AREA_BITS | area)
            counts.append(dense[bins])
        if not keys:
            return CandidateHistogram(np.empty(0, np.int64), np.empty(0, np.int64))
        keys, counts = np.concatenate(keys), np.concatenate(counts)
        order = np.argsort(keys)
        return CandidateHistogram(keys[order], counts[order])


@dataclass(frozen=True)
class Cutoff:
    """Per region (group, area) (``group << 32 | area``, sorted ``areas``), the lowest score bin
    whose regions could be chosen; regions of an area not listed (larger than the budget, or of
    a group that has none) cannot be."""

    areas: np.ndarray  # int64
    lowest_bin: np.ndarray  # int64

    def keep(self, c: Candidates) -> Candidates:
        if len(c) == 0 or self.areas.size == 0:
            return Candidates.empty()
        area = c.area.astype(np.int64)
        if c.group is not None:
            area |= c.group.astype(np.int64) << _AREA_BITS
        at = np.minimum(np.searchsorted(self.areas, area), self.areas.size - 1)
        listed = self.areas[at] == area
        return c.take(listed & (score_bins(c.score) >= self.lowest_bin[at]))
