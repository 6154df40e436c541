"""Diverse selection: the k-center rule, its exactness across teacher blocks, the embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_acquisition_cutoff import _block_parts, _pool, _summed

from s4al_ray.acquisition import Candidates, select, select_regions
from s4al_ray.acquisition_diversity import (
    EMBED_DIM,
    TIE_DISTANCE,
    candidate_pixels,
    k_center_fill,
)
from s4al_ray.config import ConfigError, load_config
from s4al_ray.region_embeddings import pixel_embeddings, region_embeddings, segment_embeddings
from s4al_ray.regions import RegionGrid
from s4al_ray.superpixels import SuperpixelRegions


def _unit(rng, n: int) -> np.ndarray:
    v = rng.normal(size=(n, EMBED_DIM)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)


def test_diverse_selection_spreads_the_budget_over_what_regions_look_like():
    """Two kinds of region: four near-duplicates with the best scores, four others. Ranked
    selection spends a two-region budget on the duplicates; diverse selection over a shortlist
    holding both kinds takes the best of each; with a shortlist of one budget it is ranked."""
    rng = np.random.default_rng(0)
    a, b = _unit(rng, 2)
    embedding = np.stack([a] * 4 + [b] * 4) + rng.normal(0, 0.01, (8, EMBED_DIM))
    c = Candidates(
        np.zeros(8, np.int64),
        np.arange(8),
        np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], np.float32),
        np.full(8, 4, np.int64),
        embedding=embedding.astype(np.float16),
    )
    assert select(c, ["x"], budget_pixels=8) == {"x": [0, 1]}
    assert select(c, ["x"], budget_pixels=8, selection="diverse", shortlist=4) == {"x": [0, 4]}
    assert select(c, ["x"], budget_pixels=8, selection="diverse", shortlist=1) == {"x": [0, 1]}
    # nothing fits, nothing to choose from: nothing chosen
    assert select(c, ["x"], budget_pixels=3, selection="diverse") == {}
    assert select(Candidates.empty(), [], budget_pixels=8, selection="diverse") == {}
    unembedded = Candidates(*(getattr(c, f) for f in Candidates.FIELDS))
    with pytest.raises(ValueError, match="embeddings"):
        select(unembedded, ["x"], budget_pixels=8, selection="diverse")


def test_k_center_skips_what_no_longer_fits_and_takes_smaller_regions():
    """The farthest region is too big for what is left: the next farthest that fits is taken."""
    v = np.eye(EMBED_DIM, dtype=np.float16)[:4]
    area = np.array([4, 8, 2, 2])
    # after 0 (4 px) 6 px are left: 1 (8 px, as far as any) no longer fits; 2 then 3 do
    assert k_center_fill(v, area, 10).tolist() == [0, 2, 3]
    assert k_center_fill(v, np.array([20, 4, 4, 4]), 10).tolist() == [1, 2]


def _reference_diverse(scores, grids, acquired, embeddings, budget, shortlist, exclude_border):
    """Diverse selection written plainly: rows in (score desc, image, region) order, the greedy
    shortlist of shortlist x budget, then k-center with Python loops."""
    ids = sorted(scores)
    rows = []
    for i, sid in enumerate(ids):
        grid = grids[sid]
        border = set(grid.border_regions().tolist()) if exclude_border else set()
        for region in range(grid.num_regions):
            if region in acquired.get(sid, []) or region in border:
                continue
            rows.append((scores[sid][region], i, region, int(grid.areas[region])))
    rows.sort(key=lambda row: (-row[0], row[1], row[2]))
    short, room = [], int(budget * shortlist)
    for row in rows:
        if row[3] <= room:
            short.append(row)
            room -= row[3]
    vec = [embeddings[ids[r[1]]][r[2]].astype(np.float64) for r in short]
    taken, left, nearest = [], budget, [np.inf] * len(short)
    is_taken = [False] * len(short)
    while True:
        fits = [k for k in range(len(short)) if not is_taken[k] and short[k][3] <= left]
        if not fits:
            break
        farthest = max(nearest[k] for k in fits)
        pick = min(k for k in fits if nearest[k] >= farthest - TIE_DISTANCE)
        taken.append(pick)
        is_taken[pick] = True
        left -= short[pick][3]
        for k in range(len(short)):
            nearest[k] = min(nearest[k], float(1.0 - vec[k] @ vec[pick]))
    chosen: dict[str, list[int]] = {}
    for k in taken:
        chosen.setdefault(ids[short[k][1]], []).append(short[k][2])
    return {k: sorted(v) for k, v in chosen.items()}


def test_diverse_candidates_from_blocks_select_exactly_what_the_plain_rule_does():
    """Random pools: blocks keep the candidates covering the shortlist (``candidate_pixels``),
    the summed histograms cut them, and the merge selects exactly what the plain rule selects
    over the whole pool (the k-center step sees exactly the global shortlist)."""
    rng = np.random.default_rng(11)
    for trial in range(120):
        grids, scores, acquired = _pool(rng, int(rng.integers(1, 30)), coarse=trial % 2 == 0)
        embeddings = {s: _unit(rng, g.num_regions) for s, g in grids.items()}
        pool_px = sum(int(g.areas.sum()) for g in grids.values())
        budget = int(rng.integers(0, pool_px) * rng.choice([0.05, 0.3, 1.0]))
        shortlist = float(rng.choice([1.0, 2.5, 4.0]))
        exclude = bool(rng.random() < 0.3)
        expected = _reference_diverse(
            scores, grids, acquired, embeddings, budget, shortlist, exclude
        )
        options = dict(budget_pixels=budget, selection="diverse", shortlist=shortlist)
        whole = select_regions(
            scores, grids, acquired, exclude_border=exclude, embeddings=embeddings, **options
        )
        assert whole == expected, (trial, budget, shortlist)
        ids = sorted(scores)
        covered = candidate_pixels("diverse", budget, shortlist)
        parts = _block_parts(
            scores,
            grids,
            acquired,
            exclude_border=exclude,
            embeddings=embeddings,
            budget_pixels=covered,
        )
        kept = Candidates.concat([_summed(parts).cutoff(covered).keep(p) for p in parts])
        assert select(kept, ids, **options) == expected, (trial, budget, shortlist, exclude)


def test_region_embeddings_are_unit_means_of_each_regions_pixels():
    """Against a plain per-region mean, on a size the regions do not divide (cut edge regions)
    and an embedding map of a quarter of it, as the model's stride-4 head gives."""
    torch.manual_seed(0)
    height, width, size = 37, 41, 16
    embedding = torch.randn(2, 24, 10, 11)
    got = region_embeddings(embedding, (height, width), size)
    grid = RegionGrid(height, width, size)
    assert got.shape == (2, grid.num_regions, EMBED_DIM) and got.dtype == np.float16
    assert np.allclose(np.linalg.norm(got.astype(np.float32), axis=2), 1, atol=2e-3)
    # the reference: RegionGrid's mean of each channel over each region's true pixels
    full = pixel_embeddings(embedding, (height, width)).numpy()
    for b in range(2):
        means = np.stack([grid.region_means(channel) for channel in full[b]], axis=1)
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        assert np.allclose(got[b].astype(np.float32), means, atol=2e-3)
    # pixels are unit vectors before the projection: a map scaled per pixel embeds the same
    scaled = embedding * torch.rand(2, 1, 10, 11).add(0.5)
    assert np.allclose(region_embeddings(scaled, (height, width), size), got, atol=2e-3)
    # a fixed projection: every teacher, every round embeds alike
    assert np.array_equal(region_embeddings(embedding, (height, width), size), got)


def test_superpixel_embeddings_are_unit_means_of_each_superpixels_pixels():
    """Against the squares' embedding when the segments are the square grid, and against a
    plain per-region mean on irregular segments of two images with different counts."""
    torch.manual_seed(1)
    height, width, size = 37, 41, 16
    embedding = torch.randn(2, 24, 10, 11)
    rows, cols = np.mgrid[:height, :width]
    squares = (rows // size) * -(-width // size) + cols // size
    got = segment_embeddings(embedding, np.stack([squares, squares]))
    expected = region_embeddings(embedding, (height, width), size)
    for b in range(2):
        assert got[b].dtype == np.float16
        assert np.allclose(got[b].astype(np.float32), expected[b].astype(np.float32), atol=3e-3)
    rng = np.random.default_rng(0)
    irregular = np.stack([rng.integers(0, 7, (height, width)), rng.integers(0, 4, (height, width))])
    got = segment_embeddings(embedding, irregular)
    full = pixel_embeddings(embedding, (height, width)).numpy()
    for b in range(2):
        regions = SuperpixelRegions(irregular[b])
        means = np.stack([regions.region_means(channel) for channel in full[b]], axis=1)
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        assert got[b].shape == (regions.num_regions, EMBED_DIM)
        assert np.allclose(got[b].astype(np.float32), means, atol=3e-3)


def test_diverse_selection_with_topk_mode_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="selection: diverse.*mode=budget"):
        load_config(
            "configs/smoke.yaml",
            [f"storage={tmp_path}", "acquisition.selection=diverse", "acquisition.mode=topk"],
        )
