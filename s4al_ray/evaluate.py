"""Confusion matrix, mIoU and per-class IoU.

Classes absent from both prediction and ground truth have no IoU (NaN) and are left out of the
mean, instead of counting as 0 as the reference code did.
"""

from __future__ import annotations

import numpy as np
import torch

from s4al_ray import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64, rows = ground truth, columns = prediction; ignore pixels skipped."""
    valid = target != IGNORE_INDEX
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    ious = iou_per_class(confusion)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")


def pixel_accuracy(confusion: np.ndarray) -> float:
    confusion = np.asarray(confusion, dtype=np.float64)
    return float(np.trace(confusion) / max(confusion.sum(), 1.0))
