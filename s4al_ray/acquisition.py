"""Region acquisition: pixel scores -> region scores -> selection under a budget.

Pixel scores come from the registry in ``scores.py``; the teacher workers average them per region
(:func:`region_scores`), and selection runs in the driver over the whole pool, so the global
ranking sees every region at once.
"""

from __future__ import annotations

import numpy as np

from s4al_ray.regions import RegionGrid


def region_scores(pixel_score: np.ndarray, known: np.ndarray, grid: RegionGrid) -> np.ndarray:
    """Mean score of each region, with already-labeled pixels counting 0 (as in S4AL+)."""
    return grid.region_means(np.where(known, 0.0, pixel_score)).astype(np.float32)


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


def _candidates(
    scores: dict[str, np.ndarray],
    acquired: dict[str, list[int]],
    grids: dict[str, RegionGrid],
    exclude_border: bool,
):
    """Flat arrays (score, image index, region, area) of every region that may be acquired."""
    ids = sorted(scores)
    parts = []
    for i, sample_id in enumerate(ids):
        grid = grids[sample_id]
        allowed = np.ones(grid.num_regions, dtype=bool)
        allowed[list(acquired.get(sample_id, []))] = False
        if exclude_border:
            allowed[grid.border_regions()] = False
        regions = np.flatnonzero(allowed)
        parts.append(
            (scores[sample_id][regions], np.full(regions.size, i), regions, grid.areas[regions])
        )
    if not parts:
        return ids, np.empty(0), np.empty(0, int), np.empty(0, int), np.empty(0, int)
    score, image, region, area = (np.concatenate(x) for x in zip(*parts))
    return ids, score, image, region, area


def select_regions(
    scores: dict[str, np.ndarray],
    grids: dict[str, RegionGrid],
    acquired: dict[str, list[int]],
    *,
    mode: str = "budget",
    budget_pixels: int = 0,
    top_k: int = 4,
    exclude_border: bool = False,
) -> dict[str, list[int]]:
    """Pick regions to label.

    ``budget``: global ranking across the pool; take regions in descending score while they fit
    the pixel budget (a region too big for what is left is skipped, smaller ones may still fit).
    ``topk``: the reference code's k best regions of every image (still capped by the budget).
    Ties are broken by sample id and region index, so selection is deterministic.
    """
    ids, score, image, region, area = _candidates(scores, acquired, grids, exclude_border)
    order = np.lexsort((region, image, -score))
    if mode == "topk":
        rank_in_image = np.zeros(order.size, dtype=np.int64)
        seen: dict[int, int] = {}
        for pos, idx in enumerate(order):
            rank_in_image[pos] = seen.get(image[idx], 0)
            seen[image[idx]] = rank_in_image[pos] + 1
        order = order[rank_in_image < top_k]
    elif mode != "budget":
        raise ValueError(f"unknown acquisition mode {mode!r}; budget or topk")
    chosen: dict[str, list[int]] = {}
    left = int(budget_pixels)
    for idx in order:
        if area[idx] <= left:
            chosen.setdefault(ids[image[idx]], []).append(int(region[idx]))
            left -= int(area[idx])
        if left <= 0:
            break
    return {k: sorted(v) for k, v in chosen.items()}
