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
drops regions the greedy fill could not take.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s4al_ray.acquisition import Candidates, score_order_key

# A score bin is the top 16 bits of the score's order-preserving integer key (sign, exponent,
# 7 mantissa bits): 2^-7 relative resolution, so the bin the budget ends in holds well under 1%
# of a pool, and a block's histogram has at most a few thousand non-empty bins.
_KEPT_BITS = 16
_AREA_BITS = 32  # histogram keys: bin << 32 | area (a region's area is far below 2^32)


def score_bins(score: np.ndarray) -> np.ndarray:
    """Bins of float32 scores, monotone: a higher score never lands in a lower bin. The top bits
    of the ranking's own key (``acquisition.score_order_key``), so NaN and -0.0 fall where the
    ranking puts them."""
    return (score_order_key(score) >> (32 - _KEPT_BITS)).astype(np.int64)


@dataclass(frozen=True)
class CandidateHistogram:
    """How many candidate regions fall in each (score bin, area): sorted distinct ``keys``
    (``bin << 32 | area``) and their ``counts``."""

    keys: np.ndarray  # int64
    counts: np.ndarray  # int64

    @staticmethod
    def keys_of(c: Candidates) -> np.ndarray:
        """Each candidate's histogram key."""
        return score_bins(c.score) << _AREA_BITS | c.area.astype(np.int64)

    @staticmethod
    def of(c: Candidates) -> "CandidateHistogram":
        distinct, counts = np.unique(CandidateHistogram.keys_of(c), return_counts=True)
        return CandidateHistogram(distinct, counts.astype(np.int64))

    @property
    def bins(self) -> np.ndarray:
        return self.keys >> _AREA_BITS

    @property
    def areas(self) -> np.ndarray:
        return self.keys & ((1 << _AREA_BITS) - 1)

    @property
    def regions(self) -> int:
        return int(self.counts.sum())

    def cutoff(self, budget_pixels: int) -> "Cutoff":
        """The lowest bin each area could be chosen from by the greedy fill of the budget.

        Regions are taken best first while they fit. Let B be the highest bin at which the
        pixels of the bins from the top reach the budget (all of them cannot be taken), so the
        first region skipped for want of room lies in a bin >= B and is at most ``limit``, the
        largest area there; what is left after it is below ``limit``. From then on a region of
        area ``a`` is taken exactly while ``a`` fits, so the regions of area ``a`` chosen below B
        are the first of them, at most ``(limit - 1) // a``: keeping the bins down to where that
        many are reached keeps every region the fill can take."""
        bins, areas, counts = self.bins, self.areas, self.counts
        fits = areas <= budget_pixels
        bins, areas, counts = bins[fits], areas[fits], counts[fits]
        if budget_pixels <= 0 or bins.size == 0:
            return Cutoff(np.empty(0, np.int64), np.empty(0, np.int64))
        distinct_areas = np.unique(areas)
        order = np.argsort(-bins, kind="stable")
        bins, areas, counts = bins[order], areas[order], counts[order]
        reached = np.searchsorted(np.cumsum(counts * areas), budget_pixels)
        if reached >= bins.size:  # the budget takes every candidate
            return Cutoff(distinct_areas, np.full(distinct_areas.size, np.iinfo(np.int64).min))
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
        return Cutoff(distinct_areas, lowest)


class HistogramSum:
    """Sums block histograms as they stream in, in dense per-area arrays of every bin: O(the
    histogram entries) whatever their number (the blocks of a 10^6-image pool hand over ~10^7),
    where re-merging sorted keys per block would cost O(blocks x bins)."""

    def __init__(self) -> None:
        self.by_area: dict[int, np.ndarray] = {}

    def add(self, hist: CandidateHistogram) -> None:
        areas, bins = hist.areas, hist.bins
        for area in np.unique(areas).tolist():
            dense = self.by_area.get(area)
            if dense is None:
                dense = self.by_area[area] = np.zeros(1 << _KEPT_BITS, np.int64)
            mine = areas == area
            np.add.at(dense, bins[mine], hist.counts[mine])

    def result(self) -> CandidateHistogram:
        keys, counts = [], []
        for area in sorted(self.by_area):
            dense = self.by_area[area]
            bins = np.flatnonzero(dense)
            keys.append(bins.astype(np.int64) << _AREA_BITS | area)
            counts.append(dense[bins])
        if not keys:
            return CandidateHistogram(np.empty(0, np.int64), np.empty(0, np.int64))
        keys, counts = np.concatenate(keys), np.concatenate(counts)
        order = np.argsort(keys)
        return CandidateHistogram(keys[order], counts[order])


@dataclass(frozen=True)
class Cutoff:
    """Per region area, the lowest score bin whose regions could be chosen (sorted ``areas``);
    regions of an area not listed (larger than the budget) cannot be."""

    areas: np.ndarray  # int64
    lowest_bin: np.ndarray  # int64

    def keep(self, c: Candidates) -> Candidates:
        if len(c) == 0 or self.areas.size == 0:
            return Candidates.empty()
        area = c.area.astype(np.int64)
        at = np.minimum(np.searchsorted(self.areas, area), self.areas.size - 1)
        listed = self.areas[at] == area
        return c.take(listed & (score_bins(c.score) >= self.lowest_bin[at]))
