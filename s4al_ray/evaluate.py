"""Confusion matrix, mIoU and per-class IoU.

Classes absent from both prediction and ground truth have no IoU (NaN) and are left out of the
mean, instead of counting as 0 as the reference code did.
"""

from __future__ import annotations

import numpy as np
import torch

from s4al_ray import IGNORE_INDEX
from s4al_ray.data.io import load_image, load_mask
from s4al_ray.data.training import image_tensor, normalize


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64, rows = ground truth, columns = prediction; ignore pixels skipped."""
    valid = target != IGNORE_INDEX
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


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


def split_fields(split: str, confusion: np.ndarray, classes: list[str]) -> dict:
    """A split's scores under the record's names: ``val/miou``, ``val/pixel_acc``,
    ``val/iou/<class>`` (None where the class has no IoU)."""
    ious = iou_per_class(confusion)
    return {
        f"{split}/miou": mean_iou(confusion),
        f"{split}/pixel_acc": pixel_accuracy(confusion),
        **{f"{split}/iou/{c}": (None if np.isnan(v) else float(v)) for c, v in zip(classes, ious)},
    }


@torch.no_grad()
def evaluate_items(
    model, items: list[dict], num_classes: int, device, batch_size: int = 8
) -> torch.Tensor:
    """Confusion matrix of ``model`` over ``items`` (any sizes: batches group equal sizes)."""
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    by_size: dict[tuple[int, int], list[dict]] = {}
    for item in items:
        by_size.setdefault((item["height"], item["width"]), []).append(item)
    for group in by_size.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            x = torch.stack([image_tensor(load_image(i["image_uri"])) for i in chunk])
            y = torch.stack(
                [torch.from_numpy(load_mask(i["mask_uri"]).astype(np.int64)) for i in chunk]
            )
            confusion += confusion_matrix(predict_labels(model, x, device), y, num_classes)
    return confusion


@torch.no_grad()
def predict_labels(model, images: torch.Tensor, device) -> torch.Tensor:
    """(B, H, W) arg-max labels (CPU) of ``images`` (B, 3, H, W floats in [0, 1]): the forward
    the student's validation and ``python run.py evaluate`` share, so both score a checkpoint
    identically."""
    return model(normalize(images.to(device)))["logits"].argmax(1).cpu()
