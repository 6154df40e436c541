"""The student's loss on a joint batch: cross-entropy on labeled and pseudo-labeled images, plus
ReCo on the representation head, weighted as configured."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from s4al_ray import IGNORE_INDEX
from s4al_ray.config import RecoConfig, TrainConfig
from s4al_ray.losses.reco import reco_loss


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean CE over non-ignore pixels; 0 (not NaN) when every pixel is ignore."""
    loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / (target != IGNORE_INDEX).sum().clamp(min=1)


def joint_losses(
    out: dict[str, torch.Tensor],
    y: torch.Tensor,
    n_labeled: int,
    train: TrainConfig,
    reco: RecoConfig,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The loss parts and ``total`` for the model output ``out`` on a batch whose first
    ``n_labeled`` images are labeled and the rest pool images (targets ``y``)."""
    losses = {"sup": masked_cross_entropy(out["logits"][:n_labeled], y[:n_labeled])}
    if y.shape[0] > n_labeled:
        losses["unsup"] = masked_cross_entropy(out["logits"][n_labeled:], y[n_labeled:])
    if train.reco_weight > 0:
        size = out["embedding"].shape[-2:]
        y_small = F.interpolate(y[:, None].float(), size=size, mode="nearest")[:, 0].long()
        probs = torch.softmax(out["logits_s4"].detach().float(), dim=1)
        losses["reco"] = reco_loss(
            out["embedding"].float(),
            probs,
            y_small,
            strong_threshold=reco.strong_threshold,
            temperature=reco.temperature,
            num_queries=reco.num_queries,
            num_negatives=reco.num_negatives,
            generator=generator,
        )
    total = losses["sup"] + train.unsup_weight * losses.get("unsup", 0.0)
    losses["total"] = total + train.reco_weight * losses.get("reco", 0.0)
    return losses
