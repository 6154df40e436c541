"""The mean-teacher baseline (S4AL): an EMA of the student labels every pool batch online.

S4AL+ labels the pool once per round, offline (``teacher.py``); this baseline instead keeps an
exponential moving average of the student and thresholds its predictions on each weakly
augmented pool batch, with the same integer rule as the offline path (``pseudo_labels.py``).
Both augmentations run batched on the training device (``data/augment.py``, called from
``student.augment_batches``): weak view -> EMA labels -> strong augmentation of view and labels.
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
    augmented pool batch ``images`` (B, 3, H, W, on the teacher's device): ignore below the class
    threshold, ``known`` (ground truth where acquired) wherever it is set. Then the batch and its
    targets are strongly augmented together there, with parameters from ``generator``."""
    probs = torch.softmax(teacher(normalize(images))["logits"].float(), dim=1)
    target = pseudo_targets(probs, thresholds, known.to(probs.device))  # on the teacher's device
    return strong_augment(images, target, crop, generator)


def make_ema_teacher(model: torch.nn.Module, train: TrainConfig, has_pool: bool):
    """The mean-teacher baseline's EMA of the student (weights and batch-norm buffers); None for
    self-training, and in round 0, which has no pool batches to label."""
    if train.method != "mean_teacher" or not has_pool:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(train.ema_decay), use_buffers=True)
    return ema.eval()
