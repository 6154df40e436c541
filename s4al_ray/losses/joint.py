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
    reco_weight: float | None = None,
) -> dict[str, torch.Tensor]:
    """The loss parts and ``total`` for the model output ``out`` on a batch whose first
    ``n_labeled`` images are labeled and the rest pool images (targets ``y``). ``reco_weight``:
    the step's ReCo weight (``reco_weight_at``; default ``train.reco_weight``)."""
    reco_weight = train.reco_weight if reco_weight is None else reco_weight
    losses = {"sup": masked_cross_entropy(out["logits"][:n_labeled], y[:n_labeled])}
    if y.shape[0] > n_labeled:
        losses["unsup"] = masked_cross_entropy(out["logits"][n_labeled:], y[n_labeled:])
    if reco_weight > 0:
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
    losses["total"] = total + reco_weight * losses.get("reco", 0.0)
    return losses


def reco_weight_at(train: TrainConfig, reco: RecoConfig, run_step: int) -> float:
    """The ReCo weight of optimiser step ``run_step`` (0-based, counted over the run): a linear
    ramp over ``reco.warmup_steps``. From scratch the contrastive term competes with the
    cross-entropy for features that have not formed yet; the ramp lets them form first."""
    if reco.warmup_steps <= 0:
        return train.reco_weight
    return train.reco_weight * min(1.0, (run_step + 1) / reco.warmup_steps)
