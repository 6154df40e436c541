"""Torch datasets for the student: labeled images and pool images with their training targets.

The target of a pool image is its pseudo-label (ignore where the teacher was not confident
enough for the class it predicted), replaced by ground truth inside the acquired regions.
Decoded arrays are cached per process up to a byte budget, so small datasets are decoded once per
round rather than once per step.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, WeightedRandomSampler

from s4al_ray import IGNORE_INDEX, storage
from s4al_ray.data.augment import strong_augment, weak_augment
from s4al_ray.data.io import decode_mask, load_image, load_mask
from s4al_ray.pseudo_labels import compose_target
from s4al_ray.regions import RegionGrid


class DecodeCache:
    """Decoded uint8 arrays by URI, up to ``max_bytes`` (then decodes again on every access)."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, uri: str, loader) -> np.ndarray:
        array = self.arrays.get(uri)
        if array is None:
            array = loader(uri)
            if self.used + array.nbytes <= self.max_bytes:
                self.arrays[uri] = array
                self.used += array.nbytes
        return array


def image_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1]."""
    # Cached and Ray-provided arrays are read-only; torch wants to own a writable buffer.
    array = array if array.flags.writeable else array.copy()
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0)


IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Batch (B, 3, H, W) in [0, 1] -> ImageNet-normalised, as torchvision backbones expect."""
    return (images - IMAGENET_MEAN.to(images.device)) / IMAGENET_STD.to(images.device)


def read_pseudo_labels(
    uri: str, sample_ids: set[str] | None = None
) -> dict[str, tuple[bytes, bytes]]:
    """``sample_id -> (label PNG, confidence PNG)`` from a teacher round's parquet directory."""
    fs, path = storage.filesystem(uri)
    table = pq.read_table(path, filesystem=fs, columns=["sample_id", "label_png", "conf_png"])
    out = {}
    for sid, label, conf in zip(
        *(table.column(c).to_pylist() for c in ("sample_id", "label_png", "conf_png"))
    ):
        if sample_ids is None or sid in sample_ids:
            out[sid] = (label, conf)
    return out


class LabeledImages(Dataset):
    """Fully labeled images with their ground truth, weakly augmented."""

    def __init__(
        self, items: list[dict], crop: tuple[int, int], seed: int, cache: DecodeCache | None = None
    ) -> None:
        self.items, self.crop = items, crop
        self.cache = cache or DecodeCache()
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.items[index]
        image = image_tensor(self.cache.get(item["image_uri"], load_image))
        mask = torch.from_numpy(
            self.cache.get(item["mask_uri"], load_mask).astype(np.int64)
        )  # copies
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        return weak_augment(image, mask, self.crop, self.generator)


class PoolImages(Dataset):
    """Pool images with pseudo-label + acquired ground truth targets, strongly augmented."""

    def __init__(
        self,
        items: list[dict],
        pseudo: dict[str, tuple[bytes, bytes]],
        thresholds: list[float],
        acquired: dict[str, list[int]],
        region_size: int,
        crop: tuple[int, int],
        seed: int,
        strong: bool = True,
        cache: DecodeCache | None = None,
        pseudo_labels: bool = True,
    ) -> None:
        missing = [i["sample_id"] for i in items if i["sample_id"] not in pseudo]
        if missing:
            raise ValueError(f"no pseudo-labels for {len(missing)} pool images, e.g. {missing[:3]}")
        self.items, self.pseudo, self.crop, self.strong = items, pseudo, crop, strong
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.acquired, self.region_size = acquired, region_size
        # Without pseudo-labels (the supervised-only baseline) only acquired ground truth counts.
        self.pseudo_labels = pseudo_labels
        self.cache = cache or DecodeCache()
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.items)

    def target(self, item: dict) -> np.ndarray:
        label_png, conf_png = self.pseudo[item["sample_id"]]
        regions = self.acquired.get(item["sample_id"], [])
        truth = known = None
        if regions:
            truth = self.cache.get(item["mask_uri"], load_mask)
            known = RegionGrid(item["height"], item["width"], self.region_size).mask(regions)
        label = decode_mask(label_png)
        if not self.pseudo_labels:
            target = np.full_like(label, IGNORE_INDEX)
            if known is not None:
                target[known] = truth[known]
            return target
        return compose_target(label, decode_mask(conf_png), self.thresholds, truth, known)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.items[index]
        image = image_tensor(self.cache.get(item["image_uri"], load_image))
        target = torch.from_numpy(self.target(item).astype(np.int64))
        augment = strong_augment if self.strong else weak_augment
        return augment(image, target, self.crop, self.generator)


def repeat_factors(class_pixels: dict[str, np.ndarray], threshold: float) -> dict[str, float]:
    """Class-balanced sampling weights for pool images (repeat-factor sampling, as in LVIS).

    ``class_pixels`` holds each image's predicted pixels per class. A class present in a share
    f_c of the images gets r_c = max(1, sqrt(threshold / f_c)); an image is drawn in proportion to
    the largest r_c of the classes it contains, so images with rare classes (poles, signs) are seen
    more often without dropping any image.
    """
    ids = sorted(class_pixels)
    present = np.stack([np.asarray(class_pixels[i]) > 0 for i in ids])
    share = present.mean(0)
    factor = np.where(
        share > 0, np.maximum(1.0, np.sqrt(threshold / np.maximum(share, 1e-12))), 1.0
    )
    weights = np.where(present, factor[None, :], 1.0).max(1)
    return {i: float(w) for i, w in zip(ids, weights)}


def _reseed_worker(worker_id: int) -> None:
    """DataLoader worker processes get a copy of the dataset; give each its own stream."""
    info = torch.utils.data.get_worker_info()
    info.dataset.generator.manual_seed(info.seed % 2**63)


def epoch_batches(
    dataset,
    batch_size: int,
    steps: int,
    seed: int,
    workers: int,
    weights: list[float] | None = None,
    pin_memory: bool = False,
):
    """One epoch of ``steps`` batches drawn with replacement (weighted when class-balanced)."""
    dataset.generator.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    count = batch_size * steps
    if weights is not None:
        sampler = WeightedRandomSampler(weights, count, replacement=True, generator=generator)
    else:
        sampler = RandomSampler(dataset, replacement=True, num_samples=count, generator=generator)
    return iter(
        DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            drop_last=True,
            worker_init_fn=_reseed_worker if workers else None,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(seed + 2),
        )
    )
