"""Diverse selection (``acquisition.selection=diverse``): uncertain regions that do not repeat.

A cold-start model is uncertain about whole kinds of region at once (every car side, every
stretch of one wall), so the best scores of a ranked round are near-duplicates of each other and
a round spends its budget teaching one thing many times. Diverse selection keeps the ranking's
uncertainty but spreads the budget over what the regions look like:

1. The shortlist: the greedy fill of ``shortlist`` x the budget in ranked order (the most
   uncertain regions, as ``ranked`` selection would take them from a larger budget).
2. k-center greedy over the shortlist's region embeddings (cosine distance): the best-scoring
   region first, then always the region farthest from every region already chosen, while one
   still fits the pixel budget. Distances within ``TIE_DISTANCE`` of the farthest count as
   equal and the better score wins: among near-duplicates the most uncertain is taken, not
   whichever embedding noise puts a hair farther.

The embeddings come from the student's representation head (the one ReCo trains; with ReCo off
it is a random projection of the trained decoder features, which still tells kinds of region
apart), pixel embeddings L2-normalised, projected to ``EMBED_DIM`` by a fixed random matrix (a
typical error of ~sqrt(2/32) = 0.25 on a cosine, Johnson-Lindenstrauss; one matrix for every
region, so near-duplicates stay near) and averaged over each region's pixels in the teacher's
model stage (``region_embeddings.py``). Neighbouring regions of one object embed alike, so the
rule spreads the budget across images and objects as well as across appearances.

Exact at scale, like the other rules: the shortlist is itself a greedy fill in ranked order, so
each teacher block keeps the candidates that fill ``shortlist`` x the budget
(``candidate_pixels``) and the histogram cut-off works unchanged; the k-center step then sees
exactly the shortlist one global ranking gives. Its cost is O(shortlist x chosen x EMBED_DIM)
in the driver: on the 2-core VM 0.02 s for 1,000 regions chosen from 3,000, 1.1 s for 10^4 from
3x10^4, 12 s for 3x10^4 from 9x10^4; beyond that ``ranked`` or ``class_balanced`` is the rule.
"""

from __future__ import annotations

import numpy as np

EMBED_DIM = 32
# Cosine distance under which two candidates' distances to the chosen set count as equal (the
# better score wins), so that embedding noise does not pick among near-duplicates.
TIE_DISTANCE = 0.05


def candidate_pixels(selection: str, budget_pixels: int, shortlist: float) -> int:
    """The pixels the teacher blocks' candidates must cover for ``selection``: the budget, or
    for ``diverse`` the shortlist the k-center step chooses from."""
    return int(budget_pixels * shortlist) if selection == "diverse" else int(budget_pixels)


def k_center_fill(embedding: np.ndarray | None, area: np.ndarray, budget: int) -> np.ndarray:
    """Positions (into the shortlist, which is in ranked order) that k-center greedy takes under
    ``budget`` pixels: position 0 first, then among the regions that still fit the earliest
    within ``TIE_DISTANCE`` of the farthest (by cosine distance) from all taken."""
    if embedding is None or area.size == 0 or budget <= 0:
        return np.empty(0, np.int64)
    vectors = embedding.astype(np.float64)
    nearest = np.full(area.size, np.inf)  # each region's distance to the closest taken
    fits = area <= budget
    taken, left = [], int(budget)
    pick = int(np.argmax(fits))  # the best-ranked region that fits
    while fits[pick]:
        taken.append(pick)
        left -= int(area[pick])
        fits[pick] = False
        np.minimum(nearest, 1.0 - vectors @ vectors[pick], out=nearest)
        fits &= area <= left
        if not fits.any():
            break
        farthest = nearest[fits].max()
        pick = int(np.argmax(fits & (nearest >= farthest - TIE_DISTANCE)))
    return np.asarray(taken, dtype=np.int64)
