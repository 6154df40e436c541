"""The mean-teacher baseline (S4AL): an EMA of the student labels every pool batch online.

S4AL+ labels the pool once per round, offline (``teacher.py``); this baseline instead keeps an
exponential moving average of the student and thresholds its predictions on each weakly
augmented pool batch, with the same integer rule as the offline path (``pseudo_labels.py``).
"""

from __future__ import annotations

import torch

from s4al_ray.config import TrainConfig
from s4al_ray.data.augment import strong_augment
from s4al_ray.data.training import normalize
from s4al_ray.pseudo_labels import pseudo_targets


@torch.no_grad()
def mean_teacher_batch(
    teacher,
    images: torch.Tensor,
    known: torch.Tensor,
    thresholds: list[float],
    crop: tuple[int, int],
    generator: torch.Generator,
):
    """The S4AL baseline's per-iteration pseudo-labels: the EMA teacher labels the weakly
    augmented pool batch (ignore below the class threshold, ground truth where acquired), then
    each image and its target are strongly augmented together."""
    device = next(teacher.parameters()).device
    probs = torch.softmax(teacher(normalize(images.to(device)))["logits"].float(), dim=1).cpu()
    target = pseudo_targets(probs, thresholds, known)
    pairs = [strong_augment(image, mask, crop, generator) for image, mask in zip(images, target)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def make_ema_teacher(model: torch.nn.Module, train: TrainConfig, has_pool: bool):
    """The mean-teacher baseline's EMA of the student (weights and batch-norm buffers); None for
    self-training, and in round 0, which has no pool batches to label."""
    if train.method != "mean_teacher" or not has_pool:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(train.ema_decay), use_buffers=True)
    return ema.eval()
