"""The global cut-off: blocks' histograms -> the candidates the driver need never see."""

from __future__ import annotations

import numpy as np
import pytest

from s4al_ray.acquisition import Candidates, block_candidates, select, select_regions
from s4al_ray.acquisition_cutoff import CandidateHistogram, HistogramSum, score_bins
from s4al_ray.regions import RegionGrid


def test_score_bins_never_rank_a_higher_score_lower():
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.normal(0, 1e3, 5000),
            rng.random(5000),
            [-np.inf, np.inf, 0.0, -0.0, 1e-40, -1e-40, np.finfo(np.float32).max],
        ]
    ).astype(np.float32)
    ordered = np.sort(values)
    bins = score_bins(ordered)
    assert (np.diff(bins) >= 0).all()
    assert score_bins(np.array([-0.0], np.float32)) == score_bins(np.array([0.0], np.float32))
    assert score_bins(np.array([np.nan], np.float32))[0] < bins.min()  # ranked last, as lexsort
    # fine enough that the budget's last bin is a small share of a pool of uniform scores
    assert np.unique(score_bins(rng.random(10**5).astype(np.float32))).size > 1000


def _summed(parts: list[Candidates]) -> CandidateHistogram:
    total = HistogramSum()
    for part in parts:
        total.add(CandidateHistogram.of(part))
    return total.result()


def _block_parts(scores, grids, acquired, *, block: int = 3, **options) -> list[Candidates]:
    """Each block of ``block`` images' candidates (``block_candidates``), blocks in id order and
    image positions in the sorted pool ids, as the teacher's post-process stage hands them."""
    ids = sorted(scores)
    positions = {s: i for i, s in enumerate(ids)}
    return [
        block_candidates(
            {s: scores[s] for s in ids[a : a + block]},
            grids,
            acquired,
            positions=positions,
            **options,
        )
        for a in range(0, len(ids), block)
    ]


def _pool(rng, images: int, *, sizes=(3, 9), coarse: bool):
    size = int(rng.integers(*sizes))
    grids, scores, acquired = {}, {}, {}
    for i in range(images):
        sid = f"img{rng.integers(0, 1000):03d}-{i}"
        grid = RegionGrid(
            int(rng.integers(size, 5 * size)), int(rng.integers(size, 5 * size)), size
        )
        grids[sid] = grid
        if coarse:  # many ties, all in few bins
            scores[sid] = (rng.integers(0, 6, grid.num_regions) / 5).astype(np.float32)
        else:
            scores[sid] = rng.random(grid.num_regions).astype(np.float32)
        if rng.random() < 0.3:
            acquired[sid] = sorted(rng.choice(grid.num_regions, 1, replace=False).tolist())
    return grids, scores, acquired


@pytest.mark.parametrize("mode", ["budget", "topk"])
def test_cut_off_candidates_select_exactly_what_the_global_ranking_does(mode):
    """Random pools (edge regions of several sizes, ties, acquired regions, borders excluded or
    not, budgets from nothing to all of the pool): the blocks' candidates cut by the cut-off
    of their summed histograms select exactly what one global ranking selects."""
    rng = np.random.default_rng(3)
    kept_total = held_total = 0
    for trial in range(200):
        grids, scores, acquired = _pool(rng, int(rng.integers(1, 40)), coarse=trial % 2 == 0)
        pool_px = sum(int(g.areas.sum()) for g in grids.values())
        options = dict(
            mode=mode,
            budget_pixels=int(rng.integers(0, pool_px) * rng.choice([0.05, 1.0])),
            top_k=int(rng.integers(1, 4)),
        )
        exclude = bool(rng.random() < 0.3)
        expected = select_regions(scores, grids, acquired, exclude_border=exclude, **options)
        ids = sorted(scores)
        parts = _block_parts(scores, grids, acquired, exclude_border=exclude, **options)
        hist = _summed(parts)
        assert hist.regions == sum(len(p) for p in parts)
        cutoff = hist.cutoff(options["budget_pixels"])
        kept = Candidates.concat([cutoff.keep(p) for p in parts])
        assert select(kept, ids, **options) == expected, (trial, options, exclude)
        kept_total += len(kept)
        held_total += sum(len(p) for p in parts)
    assert kept_total < held_total


def test_the_driver_receives_about_the_budget_not_the_pool():
    """A pool of 4,000 images of 1,000 regions (an odd image size: cut edge regions), 1% of its
    pixels: the blocks of 16 images keep everything, the cut-off leaves about the budget."""
    rng = np.random.default_rng(4)
    grid = RegionGrid(255, 405, 10)  # 26 x 41 regions: a cut last row and column
    ids = [f"i{k:05d}" for k in range(4000)]
    scores = {s: rng.random(grid.num_regions).astype(np.float32) for s in ids}
    grids = {s: grid for s in ids}
    budget = int(0.01 * len(ids) * grid.areas.sum())
    parts = _block_parts(scores, grids, {}, block=16, budget_pixels=budget)
    held = sum(len(p) for p in parts)
    assert held == len(ids) * grid.num_regions  # each block is far smaller than the budget
    cutoff = _summed(parts).cutoff(budget)
    kept = Candidates.concat([cutoff.keep(p) for p in parts])
    chosen = select(kept, ids, budget_pixels=budget)
    assert chosen == select_regions(scores, grids, {}, budget_pixels=budget)
    chosen_regions = sum(len(v) for v in chosen.values())
    assert len(kept) < 1.2 * chosen_regions, (len(kept), chosen_regions, held)


def test_streamed_histogram_sum_is_the_histogram_of_all_candidates():
    rng = np.random.default_rng(5)
    parts = []
    for _ in range(50):
        n = int(rng.integers(0, 300))
        c = Candidates(
            np.zeros(n, np.int64),
            np.arange(n),
            rng.random(n).astype(np.float32),
            rng.choice([16, 40, 100], n).astype(np.int64),
        )
        parts.append(c)
    total = HistogramSum()
    for part in parts:
        total.add(CandidateHistogram.of(part))
    merged, summed = CandidateHistogram.of(Candidates.concat(parts)), total.result()
    assert np.array_equal(merged.keys, summed.keys)
    assert np.array_equal(merged.counts, summed.counts)
    assert summed.regions == sum(len(p) for p in parts)


def _reference_class_balanced(scores, grids, acquired, groups, budget, exclude_border):
    """Class-balanced selection written plainly: groups rarest first, each a greedy fill of an
    equal share of what is left, over its regions in (score desc, image, region) order."""
    ids = sorted(scores)
    rows = []  # (score, image, region, area, group)
    for i, sid in enumerate(ids):
        grid = grids[sid]
        border = set(grid.border_regions().tolist()) if exclude_border else set()
        for region in range(grid.num_regions):
            if region in acquired.get(sid, []) or region in border:
                continue
            rows.append((scores[sid][region], i, region, grid.areas[region], groups[sid][region]))
    rows.sort(key=lambda row: (-row[0], row[1], row[2]))
    fitting = sorted({row[4] for row in rows if row[3] <= budget})
    chosen: dict[str, list[int]] = {}
    left = budget
    for k, group in enumerate(fitting):
        share = left // (len(fitting) - k)
        room = share
        for _score, image, region, area, g in rows:
            if g == group and area <= room:
                chosen.setdefault(ids[image], []).append(region)
                room -= area
        left -= share - room
    return {k: sorted(v) for k, v in chosen.items()}


def test_class_balanced_cut_off_candidates_select_exactly_what_the_plain_rule_does():
    """The blocks' candidates, pruned per class group and cut per group by the summed
    histograms, select exactly what the plain class-balanced rule selects over the whole pool."""
    rng = np.random.default_rng(8)
    kept_total = held_total = 0
    for trial in range(200):
        grids, scores, acquired = _pool(rng, int(rng.integers(1, 40)), coarse=trial % 2 == 0)
        classes = int(rng.integers(1, 5))
        groups = {
            s: rng.integers(0, classes, g.num_regions).astype(np.int16) for s, g in grids.items()
        }
        pool_px = sum(int(g.areas.sum()) for g in grids.values())
        budget = int(rng.integers(0, pool_px) * rng.choice([0.05, 0.3, 1.0]))
        exclude = bool(rng.random() < 0.3)
        expected = _reference_class_balanced(scores, grids, acquired, groups, budget, exclude)
        options = dict(budget_pixels=budget, selection="class_balanced")
        whole = select_regions(
            scores, grids, acquired, exclude_border=exclude, groups=groups, **options
        )
        assert whole == expected, (trial, budget)
        ids = sorted(scores)
        parts = _block_parts(
            scores, grids, acquired, exclude_border=exclude, groups=groups, budget_pixels=budget
        )
        cutoff = _summed(parts).cutoff(budget)
        kept = Candidates.concat([cutoff.keep(p) for p in parts])
        assert select(kept, ids, **options) == expected, (trial, budget, exclude)
        kept_total += len(kept)
        held_total += sum(len(p) for p in parts)
    assert kept_total < held_total


def test_class_balanced_shares_the_budget_rarest_first():
    """Three groups, every region 4 px: the rarest group (0) has one region, so its unused
    share passes on to the more common groups; scores order within a group only."""
    c = Candidates(
        np.zeros(7, np.int64),
        np.arange(7),
        np.array([0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4], np.float32),
        np.full(7, 4, np.int64),
        np.array([0, 2, 2, 2, 1, 1, 1], np.int16),
    )
    chosen = select(c, ["a"], budget_pixels=24, selection="class_balanced")
    # group 0: a share of 24 // 3 = 8, takes its one region (4 px); group 1: 20 // 2 = 10, two
    # regions (8 px); group 2 (the most common class): the 12 px left, three regions.
    assert chosen == {"a": [0, 1, 2, 3, 4, 5]}
    assert select(c, ["a"], budget_pixels=24) == {"a": [1, 2, 3, 4, 5, 6]}  # ranked
