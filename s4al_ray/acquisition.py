"""Region acquisition: pixel scores -> region scores -> selection under a budget.

Pixel scores come from the registry in ``scores.py``; the teacher's post-process stage averages
them per region (:func:`region_scores`) and hands over each block's candidates
(:func:`block_candidates`: the regions the round could still take); the driver keeps those that
pass the round's cut-off (``acquisition_cutoff``) and fills the budget (:func:`select`), which
gives exactly the selection of one global ranking over the pool (:func:`select_regions`).

Selection rules (``acquisition.selection``): ``ranked`` fills the budget best score first over
the whole pool; ``class_balanced`` first puts each region in the group of the rarest class the
teacher predicts on it (:func:`region_groups`), then fills the budget group by group, rarest
first, each group getting an equal share of what is left (a cold-start model's uncertainty
alone spends the budget on the classes it already sees). Each group's fill is a greedy fill of
at most the budget, so every pruning rule below holds per group. ``diverse`` takes a shortlist
of the best scores and spreads the budget over it by region embedding
(``acquisition_diversity``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from s4al_ray.acquisition_diversity import candidate_pixels, k_center_fill
from s4al_ray.acquisition_order import ranked
from s4al_ray.pool.selection import RoundSelection
from s4al_ray.regions import RegionGrid
from s4al_ray.superpixels import SuperpixelRegions

# An image's regions: squares or its superpixels (region_maps.RegionMaps.of); both answer areas,
# masks, region sums and the border ring alike.
Regions = RegionGrid | SuperpixelRegions


def region_scores(pixel_score: np.ndarray, known: np.ndarray, grid: Regions) -> np.ndarray:
    """Mean score of each region, with already-labeled pixels counting 0 (as in S4AL+)."""
    return grid.region_means(np.where(known, 0.0, pixel_score)).astype(np.float32)


SELECTIONS = ("ranked", "class_balanced", "diverse")
# A class counts as present in a region from this share of its unlabeled pixels on: a pole 2-4
# px wide crossing a 20-px region covers 10-20%, a few stray pixels on a class border do not.
MIN_CLASS_SHARE = 0.05


def class_rarity_ranks(class_pixels: list[int] | np.ndarray) -> np.ndarray:
    """Each class's rank by labeled pixels: 0 = the rarest (ties: the lower class id first)."""
    counts = np.asarray(class_pixels, dtype=np.int64)
    ranks = np.empty(counts.size, dtype=np.int64)
    ranks[np.argsort(counts, kind="stable")] = np.arange(counts.size)
    return ranks


def region_groups(class_counts: np.ndarray, rarity_ranks: np.ndarray) -> np.ndarray:
    """Each region's group for ``class_balanced`` selection: the rarity rank of the rarest class
    predicted on at least ``MIN_CLASS_SHARE`` of its unlabeled pixels (``class_counts``: regions
    x classes); a region with no unlabeled pixel gets ``num_classes``, the last group."""
    num_classes = rarity_ranks.size
    unlabeled = class_counts.sum(1, keepdims=True)
    present = (class_counts > 0) & (class_counts >= MIN_CLASS_SHARE * unlabeled)
    return np.where(present, rarity_ranks[None, :], num_classes).min(1).astype(np.int16)


def inverse_frequency_weights(class_pixels: list[int] | np.ndarray) -> np.ndarray:
    """Weights for class-weighted entropy: inverse labeled frequency, normalised to mean 1.

    A class never labeled gets the largest weight seen (not infinity), so it is favoured but
    scores stay finite.
    """
    counts = np.asarray(class_pixels, dtype=np.float64)
    freq = counts / max(counts.sum(), 1.0)
    positive = freq[freq > 0]
    floor = positive.min() if positive.size else 1.0
    weights = 1.0 / np.maximum(freq, floor)
    return weights / weights.mean()


@dataclass(frozen=True)
class Candidates:
    """Regions that may be acquired, one entry per region: what a teacher block hands the
    driver, and what the driver ranks. Images are their positions in the sorted pool ids (the
    selection's tie-break order), so ranking sorts numbers, never strings."""

    image: np.ndarray  # int64 position of the image in the sorted pool ids
    region: np.ndarray  # int
    score: np.ndarray  # float32
    area: np.ndarray  # int64, the region's true pixel count
    # int16 (region_groups) for class-balanced selection; None = one group, the whole pool
    group: np.ndarray | None = None
    # (N, EMBED_DIM) float16 region embeddings for diverse selection; None for the other rules
    embedding: np.ndarray | None = None

    FIELDS = ("image", "region", "score", "area", "group")

    @property
    def groups(self) -> np.ndarray:
        """Each entry's group (all 0 without groups)."""
        return np.zeros(len(self), np.int16) if self.group is None else self.group

    @staticmethod
    def empty() -> "Candidates":
        return Candidates(
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            np.empty(0, np.float32),
            np.empty(0, np.int64),
        )

    def __len__(self) -> int:
        return int(self.region.size)

    def take(self, index: np.ndarray) -> "Candidates":
        group = None if self.group is None else self.group[index]
        embedding = None if self.embedding is None else self.embedding[index]
        return Candidates(
            self.image[index],
            self.region[index],
            self.score[index],
            self.area[index],
            group,
            embedding,
        )

    @staticmethod
    def concat(parts: Sequence["Candidates"]) -> "Candidates":
        parts = [p for p in parts if len(p)]
        if not parts:
            return Candidates.empty()
        grouped = any(p.group is not None for p in parts)
        embedded = [p.embedding is not None for p in parts]
        if any(embedded) and not all(embedded):  # never silently drop a pass's embeddings
            raise ValueError("candidates with region embeddings mixed with candidates without")
        return Candidates(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in Candidates.FIELDS[:4]),
            np.concatenate([p.groups for p in parts]) if grouped else None,
            np.concatenate([p.embedding for p in parts]) if all(embedded) else None,
        )


def _allowed_regions(
    scores: dict[str, np.ndarray],
    acquired: dict[str, list[int]],
    grids: dict[str, Regions],
    exclude_border: bool,
    positions: dict[str, int] | None = None,
    groups: dict[str, np.ndarray] | None = None,
    embeddings: dict[str, np.ndarray] | None = None,
) -> Candidates:
    """Every region of these images that may still be acquired; ``positions``: each image's
    place in the sorted pool ids (default: these images are the whole pool); ``groups``: each
    image's region groups (``region_groups``; default: one group); ``embeddings``: each image's
    (regions, EMBED_DIM) region embeddings (diverse selection)."""
    if positions is None:
        positions = {s: i for i, s in enumerate(sorted(scores))}
    parts = []
    for sample_id in sorted(scores):
        grid = grids[sample_id]
        allowed = np.ones(grid.num_regions, dtype=bool)
        allowed[list(acquired.get(sample_id, []))] = False
        if exclude_border:
            allowed[grid.border_regions()] = False
        regions = np.flatnonzero(allowed)
        parts.append(
            Candidates(
                np.full(regions.size, positions[sample_id], dtype=np.int64),
                regions,
                np.asarray(scores[sample_id], np.float32)[regions],
                grid.areas[regions].astype(np.int64),
                None if groups is None else np.asarray(groups[sample_id], np.int16)[regions],
                None if embeddings is None else np.asarray(embeddings[sample_id])[regions],
            )
        )
    return Candidates.concat(parts)


def _could_be_chosen(area: np.ndarray, budget: int) -> np.ndarray:
    """Which regions, taken in this (selection) order, the greedy fill of ``budget`` could still
    choose whatever other blocks hold: a superset of what it chooses, usually a short prefix.

    Once a prefix of the regions is at least the budget by itself, a later region can only be
    chosen if a region of that prefix was skipped as too big for what was left, so it must be
    strictly smaller than the prefix's largest region; the argument repeats with the smaller
    regions after it (a handful of levels: full regions, then the cut edge regions)."""
    keep = np.zeros(area.size, dtype=bool)
    limit, start = np.inf, 0
    index = np.arange(area.size)
    while True:
        pos = np.flatnonzero((area < limit) & (area <= budget) & (index >= start))
        if pos.size == 0:
            return keep
        filled = np.searchsorted(np.cumsum(area[pos]), budget)  # first prefix reaching it
        if filled >= pos.size:
            keep[pos] = True
            return keep
        level = pos[: filled + 1]
        keep[level] = True
        limit, start = area[level].max(), level[-1] + 1


def block_candidates(
    scores: dict[str, np.ndarray],
    grids: dict[str, Regions],
    acquired: dict[str, list[int]],
    *,
    mode: str = "budget",
    budget_pixels: int = 0,
    top_k: int = 4,
    exclude_border: bool = False,
    positions: dict[str, int] | None = None,
    groups: dict[str, np.ndarray] | None = None,
    embeddings: dict[str, np.ndarray] | None = None,
) -> Candidates:
    """The regions of this block of images that the round's selection could take: every one the
    global ranking picks is among them, so merging all blocks' candidates (``select``) gives
    exactly the selection of the whole pool at once while the driver holds only candidates.
    ``budget_pixels``: what the candidates must cover (``candidate_pixels``)."""
    c = _allowed_regions(scores, acquired, grids, exclude_border, positions, groups, embeddings)
    return could_be_chosen(c, mode=mode, budget_pixels=budget_pixels, top_k=top_k)


def could_be_chosen(
    c: Candidates, *, mode: str = "budget", budget_pixels: int = 0, top_k: int = 4
) -> Candidates:
    """The part of ``c`` the selection could still take (see ``_could_be_chosen``), in selection
    order, group by group (a group's fill never exceeds the budget). The rule holds for any
    subset of the pool, so candidate sets can be merged and cut again in any grouping."""
    order = ranked(c.score, c.image, c.region, mode, top_k)
    if c.group is None:
        return c.take(order[_could_be_chosen(c.area[order], int(budget_pixels))])
    keep = np.zeros(order.size, dtype=bool)
    in_order = c.group[order]
    for group in np.unique(in_order).tolist():
        mine = np.flatnonzero(in_order == group)
        keep[mine[_could_be_chosen(c.area[order[mine]], int(budget_pixels))]] = True
    return c.take(order[keep])


def _greedy_fill(area: np.ndarray, budget: int) -> tuple[np.ndarray, int]:
    """Positions of ``area`` (in selection order) that the greedy fill of ``budget`` takes: in
    order while they fit (a region too big for what is left is skipped, smaller ones may still
    fit); and the pixels left."""
    taken: list[np.ndarray] = []
    left, pos = int(budget), 0
    # In bulk: the longest run that fits; then jump to the next region small enough for what
    # is left (left only shrinks, so a region too big once stays too big).
    while pos < area.size and left > 0:
        cum = np.cumsum(area[pos:])
        fit = int(np.searchsorted(cum, left, side="right"))
        if fit:
            taken.append(np.arange(pos, pos + fit))
            left -= int(cum[fit - 1])
            pos += fit
        smaller = np.flatnonzero(area[pos:] <= left)
        if smaller.size == 0:
            break
        pos += int(smaller[0])
    return (np.concatenate(taken) if taken else np.empty(0, np.int64)), left


def _class_balanced_fill(c: Candidates, order: np.ndarray, budget: int) -> np.ndarray:
    """Groups in ascending order (rarest class first); each fills an equal share of the budget
    still left over the groups still to come, so what a group cannot use passes on. Only groups
    with a region that fits the budget count (the pruning rules keep exactly those)."""
    groups = c.groups[order]
    fitting = np.unique(groups[c.area[order] <= budget]).tolist()
    taken, left = [], int(budget)
    for k, group in enumerate(fitting):
        mine = order[groups == group]
        share = left // (len(fitting) - k)
        positions, unused = _greedy_fill(c.area[mine], share)
        taken.append(mine[positions])
        left -= share - unused
    return np.concatenate(taken) if taken else np.empty(0, np.int64)


def select(
    candidates: Candidates,
    ids: Sequence[str],
    *,
    mode: str = "budget",
    budget_pixels: int = 0,
    top_k: int = 4,
    selection: str = "ranked",
    shortlist: float = 3.0,
    positions: np.ndarray | None = None,
) -> RoundSelection:
    """The greedy fill of the pixel budget in selection order (``ranked``), group by group
    (``class_balanced``, see ``_class_balanced_fill``), or k-center over the greedy fill of
    ``shortlist`` x the budget (``diverse``, see ``acquisition_diversity``). ``ids``: the sorted
    pool ids the candidates' image positions refer to; ``positions``: where those sit in the
    pool's image sizes (``PoolState.pool_order``), handed on with the selection. Returned as
    the columns the pool state keeps (a dict of lists would cost seconds at 10^6 images)."""
    order = ranked(candidates.score, candidates.image, candidates.region, mode, top_k)
    if selection == "class_balanced":
        chosen = _class_balanced_fill(candidates, order, int(budget_pixels))
    elif selection == "diverse":
        pixels = candidate_pixels(selection, int(budget_pixels), shortlist)
        short = order[_greedy_fill(candidates.area[order], pixels)[0]]
        if short.size and candidates.embedding is None:
            raise ValueError("diverse selection needs the candidates' region embeddings")
        vectors = None if candidates.embedding is None else candidates.embedding[short]
        chosen = short[k_center_fill(vectors, candidates.area[short], int(budget_pixels))]
    elif selection == "ranked":
        chosen = order[_greedy_fill(candidates.area[order], int(budget_pixels))[0]]
    else:
        raise ValueError(f"unknown selection {selection!r}; one of {', '.join(SELECTIONS)}")
    span = int(candidates.region.max(initial=0)) + 1
    # By id, then region: the (image, region) keys are distinct, so sorting the keys themselves
    # (5M at 10^6 images: ~0.35 s, against ~0.95 s for an argsort) gives both columns back.
    keys = np.sort(candidates.image[chosen].astype(np.int64) * span + candidates.region[chosen])
    images, regions = np.divmod(keys, span)
    starts = np.flatnonzero(np.r_[True, images[1:] != images[:-1]]) if images.size else []
    names = [ids[k] for k in images[starts].tolist()]
    chosen = RoundSelection(names, np.r_[starts, images.size], regions.astype(np.int32))
    if positions is not None:
        chosen.positions = np.asarray(positions)[images[starts]]
    return chosen


def select_regions(
    scores: dict[str, np.ndarray],
    grids: dict[str, Regions],
    acquired: dict[str, list[int]],
    *,
    mode: str = "budget",
    budget_pixels: int = 0,
    top_k: int = 4,
    exclude_border: bool = False,
    groups: dict[str, np.ndarray] | None = None,
    selection: str = "ranked",
    embeddings: dict[str, np.ndarray] | None = None,
    shortlist: float = 3.0,
) -> RoundSelection:
    """Pick regions to label from the whole pool's scores at once.

    ``budget``: global ranking across the pool under a pixel budget. ``topk``: the reference
    code's k best regions of every image (still capped by the budget). Ties are broken by sample
    id and region index, so selection is deterministic. The round loop gets the same result
    from per-block candidates (``block_candidates`` in each teacher task, then ``select``)."""
    c = _allowed_regions(scores, acquired, grids, exclude_border, None, groups, embeddings)
    return select(
        c,
        sorted(scores),
        mode=mode,
        budget_pixels=budget_pixels,
        top_k=top_k,
        selection=selection,
        shortlist=shortlist,
    )
