"""Region embeddings for diverse selection, computed in the teacher's model stage on the model's
device: the representation head's pixel vectors, L2-normalised, projected to ``EMBED_DIM`` by one
fixed random matrix and averaged over each region's pixels (squares or superpixels). The rule
that uses them is ``acquisition_diversity``, which needs no torch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from s4al_ray.acquisition_diversity import EMBED_DIM

_PROJECTION_SEED = 20261203  # fixed: every teacher, every round, projects the same way


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
