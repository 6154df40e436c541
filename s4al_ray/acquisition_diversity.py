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
model stage (:func:`region_embeddings`). Neighbouring regions of one object embed alike, so the
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
import torch
import torch.nn.functional as F

EMBED_DIM = 32
# Cosine distance under which two candidates' distances to the chosen set count as equal (the
# better score wins), so that embedding noise does not pick among near-duplicates.
TIE_DISTANCE = 0.05
_PROJECTION_SEED = 20261203  # fixed: every teacher, every round, projects the same way


def candidate_pixels(selection: str, budget_pixels: int, shortlist: float) -> int:
    """The pixels the teacher blocks' candidates must cover for ``selection``: the budget, or
    for ``diverse`` the shortlist the k-center step chooses from."""
    return int(budget_pixels * shortlist) if selection == "diverse" else int(budget_pixels)


def _projection(dim: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(_PROJECTION_SEED)
    matrix = torch.randn(dim, EMBED_DIM, generator=generator) / EMBED_DIM**0.5
    return matrix.to(device)


@torch.no_grad()
def pixel_embeddings(embedding: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, EMBED_DIM, H, W): the representation head's (B, D, h, w) output for images of
    ``size``, each pixel's vector L2-normalised, projected and upsampled to the image."""
    pixels = F.normalize(embedding.float(), dim=1)
    projected = torch.einsum("bdhw,de->behw", pixels, _projection(pixels.shape[1], pixels.device))
    return F.interpolate(projected, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def region_embeddings(embedding: torch.Tensor, size: tuple[int, int], region: int) -> np.ndarray:
    """(B, R, EMBED_DIM) float16 unit vectors: each square region's mean ``pixel_embeddings``,
    regions row-major as in ``RegionGrid``; edge regions average their true pixels only."""
    out = []
    for one in embedding.split(1):  # an image at a time: a full-size map is 32 x H x W floats
        full = pixel_embeddings(one, size)
        # ceil_mode: the cut edge windows are averaged over their in-image pixels only
        means = F.avg_pool2d(full, kernel_size=region, stride=region, ceil_mode=True)
        out.append(F.normalize(means.flatten(2).transpose(1, 2), dim=2))
    return torch.cat(out).to(torch.float16).cpu().numpy()


@torch.no_grad()
def segment_embeddings(embedding: torch.Tensor, segments: np.ndarray) -> np.ndarray:
    """Per image an (R_i, EMBED_DIM) float16 array of unit vectors: each superpixel's mean
    ``pixel_embeddings`` over its true pixels (``segments``: (B, H, W) ids 0..R_i-1, the
    stored maps). An object array, since images have different counts."""
    out = np.empty(len(segments), dtype=object)
    for k, one in enumerate(embedding.split(1)):
        full = pixel_embeddings(one, segments.shape[1:])[0].flatten(1)  # (D, H * W)
        ids = torch.from_numpy(np.ascontiguousarray(segments[k], dtype=np.int64)).flatten()
        ids = ids.to(full.device)
        count = int(ids.max()) + 1
        sums = torch.zeros(count, full.shape[0], device=full.device).index_add_(0, ids, full.T)
        out[k] = F.normalize(sums, dim=1).to(torch.float16).cpu().numpy()
    return out


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
