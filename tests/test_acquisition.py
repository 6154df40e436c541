"""Acquisition: scores rank hand-made probability maps as expected; selection under a budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s4al_ray.acquisition import inverse_frequency_weights, region_scores, select_regions
from s4al_ray.regions import RegionGrid
from s4al_ray.scores import SCORES, ScoreContext, get_score, register


def pixel_scores(probs, function, class_weights=None):
    return get_score(function)(probs, ScoreContext(class_weights=class_weights))


def _probs(*columns) -> torch.Tensor:
    """(C, 1, N) from per-pixel class distributions."""
    return torch.tensor(columns, dtype=torch.float32).T.reshape(len(columns[0]), 1, len(columns))


@pytest.mark.parametrize("function", ["entropy", "margin"])
def test_uncertain_pixels_score_higher(function):
    probs = _probs([1.0, 0.0, 0.0], [0.8, 0.2, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3])
    scores = pixel_scores(probs, function)[0]
    assert torch.all(scores[1:] >= scores[:-1])
    assert scores[0] == pytest.approx(0.0, abs=1e-6)


def test_no_nan_on_exact_zeros():
    probs = torch.zeros(4, 8, 8)
    probs[0] = 1.0
    for function in ("entropy", "class_weighted_entropy", "margin"):
        scores = pixel_scores(probs, function, class_weights=torch.ones(4))
        assert torch.isfinite(scores).all()


def test_class_weighting_lifts_rare_class_region():
    weights = torch.tensor(inverse_frequency_weights([1000, 10]), dtype=torch.float32)
    common = _probs([0.6, 0.4])  # predicted class 0 (common), same entropy as below
    rare = _probs([0.4, 0.6])  # predicted class 1 (rare)
    plain = [pixel_scores(p, "entropy").item() for p in (common, rare)]
    weighted = [pixel_scores(p, "class_weighted_entropy", weights).item() for p in (common, rare)]
    assert plain[0] == pytest.approx(plain[1])
    assert weighted[1] > 10 * weighted[0]


def test_a_registered_score_is_a_valid_config_choice():
    from s4al_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="least_confidence.*one of: entropy"):
        load_config(None, ["acquisition.function=least_confidence"])

    @register("least_confidence")
    def least_confidence(probs, ctx):
        return 1.0 - probs.max(0).values

    try:
        cfg = load_config(None, ["acquisition.function=least_confidence"])
        assert cfg.acquisition.function == "least_confidence"
        probs = _probs([0.9, 0.1], [0.5, 0.5])
        assert get_score("least_confidence")(probs)[0].tolist() == pytest.approx([0.1, 0.5])
    finally:
        del SCORES["least_confidence"]


def test_a_score_gets_only_what_it_declares():
    weights = torch.ones(3)
    plain = get_score("entropy").context(0, "a", weights)
    assert plain.class_weights is None and plain.generator is None
    weighted = get_score("class_weighted_entropy").context(0, "a", weights)
    assert weighted.class_weights is weights and weighted.generator is None
    draws = [get_score("random").context(7, "a", None).generator.initial_seed() for _ in range(2)]
    assert (
        draws[0] == draws[1] != get_score("random").context(7, "b", None).generator.initial_seed()
    )
    with pytest.raises(ValueError, match="unknown needs"):
        register("bad", needs=("labels",))


def test_inverse_frequency_weights_finite_for_unseen_class():
    weights = inverse_frequency_weights([100, 0, 10])
    assert np.isfinite(weights).all() and weights.mean() == pytest.approx(1.0)
    assert weights[1] == weights[2] > weights[0]


def test_labeled_pixels_count_zero():
    grid = RegionGrid(4, 4, 2)
    known = np.zeros((4, 4), dtype=bool)
    known[:2, :2] = True
    scores = region_scores(np.ones((4, 4)), known, grid)
    np.testing.assert_allclose(scores, [0, 1, 1, 1])


def _hand_map():
    grid = RegionGrid(30, 30, 10)  # 3x3 regions of 100 px
    scores = {
        "a": np.array([0.1, 0.9, 0.2, 0, 0, 0, 0, 0, 0.5], dtype=np.float32),
        "b": np.array([0.8, 0, 0, 0, 0.95, 0, 0, 0, 0.3], dtype=np.float32),
    }
    return scores, {"a": grid, "b": grid}


def test_budget_mode_picks_global_top_regions():
    scores, grids = _hand_map()
    chosen = select_regions(scores, grids, {}, budget_pixels=300)
    assert chosen == {"a": [1], "b": [0, 4]}


def test_budget_skips_acquired_and_border():
    scores, grids = _hand_map()
    chosen = select_regions(scores, grids, {"b": [4]}, budget_pixels=200)
    assert chosen == {"a": [1], "b": [0]}
    inner_only = select_regions(scores, grids, {}, budget_pixels=1000, exclude_border=True)
    assert inner_only == {"a": [4], "b": [4]}  # only the centre region of each image


def test_budget_is_never_exceeded_with_edge_regions():
    grid = RegionGrid(25, 25, 10)  # areas 100/50/25
    scores = {"x": np.arange(9, dtype=np.float32)[::-1].copy()}
    chosen = select_regions(scores, {"x": grid}, {}, budget_pixels=180)
    assert grid.areas[chosen["x"]].sum() <= 180
    assert chosen == {"x": [0, 1, 3]} or grid.areas[chosen["x"]].sum() == 175


def test_topk_mode_takes_k_per_image():
    scores, grids = _hand_map()
    chosen = select_regions(scores, grids, {}, mode="topk", top_k=2, budget_pixels=10**6)
    assert chosen == {"a": [1, 8], "b": [0, 4]}


def _reference_selection(scores, grids, acquired, *, mode, budget_pixels, top_k, exclude_border):
    """The selection as 67e19fb computed it (one global ranking, a per-image rank dict and a
    plain greedy loop), kept here as the independent reference."""
    ids = sorted(scores)
    parts = []
    for i, sid in enumerate(ids):
        grid = grids[sid]
        allowed = np.ones(grid.num_regions, dtype=bool)
        allowed[list(acquired.get(sid, []))] = False
        if exclude_border:
            allowed[grid.border_regions()] = False
        regions = np.flatnonzero(allowed)
        parts.append((scores[sid][regions], np.full(regions.size, i), regions, grid.areas[regions]))
    score, image, region, area = (np.concatenate(x) for x in zip(*parts))
    order = np.lexsort((region, image, -score))
    if mode == "topk":
        seen: dict[int, int] = {}
        rank = np.zeros(order.size, dtype=np.int64)
        for pos, idx in enumerate(order):
            rank[pos] = seen.get(image[idx], 0)
            seen[image[idx]] = rank[pos] + 1
        order = order[rank < top_k]
    chosen: dict[str, list[int]] = {}
    left = int(budget_pixels)
    for idx in order:
        if area[idx] <= left:
            chosen.setdefault(ids[image[idx]], []).append(int(region[idx]))
            left -= int(area[idx])
        if left <= 0:
            break
    return {k: sorted(v) for k, v in chosen.items()}


@pytest.mark.parametrize("mode", ["budget", "topk"])
def test_per_block_candidates_select_exactly_what_the_global_ranking_does(mode):
    """Each teacher block hands over only the regions that could still be chosen; merged, they
    give the selection of the whole pool ranked at once. Random pools: image sizes the region
    size does not divide (smaller edge regions), ties (scores on a coarse grid), acquired
    regions, borders excluded or not, budgets from nothing to most of the pool."""
    from s4al_ray.acquisition import Candidates, block_candidates, select

    rng = np.random.default_rng(0)
    held = total = 0
    for trial in range(150):
        size = int(rng.integers(3, 9))
        grids, scores, acquired = {}, {}, {}
        for i in range(int(rng.integers(1, 30))):
            sid = f"img{rng.integers(0, 1000):03d}-{i}"
            grid = RegionGrid(
                int(rng.integers(size, 5 * size)), int(rng.integers(size, 5 * size)), size
            )
            grids[sid] = grid
            scores[sid] = (rng.integers(0, 6, grid.num_regions) / 5).astype(np.float32)
            if rng.random() < 0.3:
                acquired[sid] = sorted(rng.choice(grid.num_regions, 1, replace=False).tolist())
        pool_px = sum(int(g.areas.sum()) for g in grids.values())
        options = dict(
            mode=mode,
            budget_pixels=int(rng.integers(0, pool_px)),
            top_k=int(rng.integers(1, 4)),
            exclude_border=bool(rng.random() < 0.3),
        )
        expected = _reference_selection(scores, grids, acquired, **options)
        assert select_regions(scores, grids, acquired, **options) == expected
        ids = sorted(scores)
        cuts = sorted(rng.choice(len(ids) + 1, int(rng.integers(0, 4)), replace=True).tolist())
        blocks = [ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(ids)])]
        positions = {s: i for i, s in enumerate(ids)}
        parts = [
            block_candidates(
                {s: scores[s] for s in block}, grids, acquired, positions=positions, **options
            )
            for block in blocks
        ]
        merged = Candidates.concat(parts)
        exclude = options.pop("exclude_border")
        assert select(merged, ids, **options) == expected, (trial, options, exclude)
        held += len(merged)
        total += sum(g.num_regions for g in grids.values())
    assert held < total  # blocks do hand over fewer regions than they hold


def test_selection_order_does_not_depend_on_how_large_the_positions_are():
    """Positions too large for the one-key sort take the three-key one: same selection."""
    from s4al_ray.acquisition import Candidates, select

    rng = np.random.default_rng(2)
    n = 5000
    c = Candidates(
        rng.integers(0, 300, n),
        rng.integers(0, 40, n),
        (rng.integers(0, 20, n) / 4).astype(np.float32),  # many ties
        rng.choice([16, 25, 100], n).astype(np.int64),
    )
    offset = 2**40

    class Ids:  # ids of positions 0..299, or of the same positions moved up by ``offset``
        def __getitem__(self, k):
            return f"id{k % offset:04d}"

    small = select(c, Ids(), budget_pixels=20000)
    moved = Candidates(c.image + offset, c.region, c.score, c.area)
    assert select(moved, Ids(), budget_pixels=20000) == small
    assert small.num_regions > 100


def test_packed_selection_order_equals_a_three_key_sort():
    """The packed-word sort gives exactly the order of (score down, image, region), whether
    the entries come in (image, region) order (merged blocks) or shuffled; NaN and -0.0 sort
    as the three-key sort puts them."""
    from s4al_ray.acquisition_order import selection_order

    rng = np.random.default_rng(5)
    for trial in range(40):
        n = int(rng.integers(1, 3000))
        # distinct (image, region) pairs, or in a third of the trials repeated ones
        pairs = np.sort(rng.choice(400 * 64, n, replace=trial % 3 == 2))
        image, region = np.divmod(pairs, 64)
        score = (rng.integers(-8, 8, n) / 4).astype(np.float32)  # many ties, and -0.0
        score[rng.random(n) < 0.02] = np.nan
        score[score == 0] *= rng.choice([-1, 1], int((score == 0).sum()))
        if trial % 2:
            shuffle = rng.permutation(n)
            image, region, score = image[shuffle], region[shuffle], score[shuffle]
        expected = np.lexsort((region, image, -score))
        np.testing.assert_array_equal(selection_order(score, image, region), expected)


def test_region_groups_put_a_region_with_the_rarest_class_it_shows():
    from s4al_ray.acquisition import class_rarity_ranks, region_groups

    ranks = class_rarity_ranks([500, 10, 90, 10])  # class 1 rarest, ties by class id
    assert ranks.tolist() == [3, 0, 2, 1]
    counts = np.array(
        [
            [380, 0, 20, 0],  # class 2 on 5%: present -> rank 2
            [390, 0, 9, 1],  # 2.25% and 0.25%: neither counts, class 0 -> rank 3
            [0, 0, 0, 0],  # no unlabeled pixel: the last group
            [100, 50, 0, 50],  # classes 1 and 3: class 1 is the rarer
        ]
    )
    assert region_groups(counts, ranks).tolist() == [2, 3, 4, 0]


def test_region_class_counts_skip_known_pixels_and_cut_edge_regions():
    grid = RegionGrid(5, 7, 4)  # 2 x 2 regions, the last row and column cut
    label = np.arange(35).reshape(5, 7) % 3
    skip = np.zeros((5, 7), bool)
    skip[0, 0] = True
    counts = grid.region_class_counts(label, 3, skip)
    assert counts.shape == (4, 3)
    assert counts.sum(1).tolist() == [15, 12, 4, 3]  # 16 - 1 skipped, 4x3, 1x4, 1x3
    assert counts[0].tolist() == [
        int(((label[:4, :4] == k) & ~skip[:4, :4]).sum()) for k in range(3)
    ]


def test_oracle_error_marks_the_teachers_wrong_pixels_and_only_with_the_simulated_oracle(
    tmp_path,
):
    """The benchmark's upper bound: 1 where the arg-max is wrong, 0 where right or unlabeled;
    refused by name where no ground truth exists (a manual oracle)."""
    from s4al_ray.config import ConfigError, load_config

    probs = _probs([0.9, 0.1], [0.2, 0.8], [0.6, 0.4])  # arg-max 0, 1, 0
    truth = torch.tensor([[0, 0, 255]])
    score = get_score("oracle_error")
    ctx = score.context(0, "a", None, truth)
    assert get_score("entropy").context(0, "a", None, truth).ground_truth is None
    assert score(probs, ctx)[0].tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ConfigError, match="oracle_error reads the pool's ground truth"):
        load_config(
            None, [f"storage={tmp_path}", "acquisition.function=oracle_error", "oracle=manual"]
        )
