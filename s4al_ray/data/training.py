"""Torch datasets for the student: labeled images and pool images with their training targets.

The target of a pool image is its pseudo-label (ignore where the teacher was not confident
enough for the class it predicted), replaced by ground truth inside the acquired regions.
Decoded arrays are cached per process up to a byte budget, so small datasets are decoded once per
round rather than once per step.

The loader does no augmentation and draws nothing at random: a sample is its decoded uint8 image
and target, a batch those padded to the batch's largest image (``collate_decoded``), and the
training step augments it on its own device (``data/augment.py``), with the epoch's generator.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, WeightedRandomSampler

from s4al_ray import IGNORE_INDEX, storage
from s4al_ray.data.io import decode_mask, load_image, load_mask
from s4al_ray.pseudo_labels import compose_target
from s4al_ray.region_maps import RegionMaps


class DecodeCache:
    """Decoded arrays (images, masks, segment maps) by URI, up to ``max_bytes`` (then decodes
    again on every access)."""

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
    """``sample_id -> (label PNG, confidence PNG)`` from a teacher round's parquet directory, for
    ``sample_ids`` only (a worker's shard): the filter runs in the scan, batch by batch, so the
    other images' PNGs are never held."""
    import pyarrow.dataset as pads

    fs, path = storage.filesystem(uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    condition = None if sample_ids is None else pads.field("sample_id").isin(sorted(sample_ids))
    out = {}
    columns = ["sample_id", "label_png", "conf_png"]
    for batch in dataset.to_batches(columns=columns, filter=condition):
        for sid, label, conf in zip(*(batch.column(c).to_pylist() for c in columns)):
            out[sid] = (label, conf)
    return out


Decoded = tuple[np.ndarray, np.ndarray]  # (H, W, 3) uint8 image, (H, W) uint8 target


class LabeledImages(Dataset):
    """Fully labeled images with their ground truth (weakly augmented by the step, which crops to
    its job's crop and draws from its epoch's generator: ``student.augment_batches``)."""

    def __init__(self, items: list[dict], cache: DecodeCache | None = None) -> None:
        self.items = items
        self.cache = cache or DecodeCache()

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Decoded:
        item = self.items[index]
        return self.cache.get(item["image_uri"], load_image), self.cache.get(
            item["mask_uri"], load_mask
        )

    def __getitem__(self, index: int) -> Decoded:
        return self.load(index)


class PoolImages(Dataset):
    """Pool images with pseudo-label + acquired ground truth targets (augmented by the step:
    strongly, or weakly for the mean teacher, which labels the weak view first)."""

    def __init__(
        self,
        items: list[dict],
        pseudo: dict[str, tuple[bytes, bytes]],
        thresholds: list[float],
        acquired: dict[str, list[int]],
        regions: RegionMaps | int,  # the pool's regions, or the side of its squares
        cache: DecodeCache | None = None,
        pseudo_labels: bool = True,
    ) -> None:
        missing = [i["sample_id"] for i in items if i["sample_id"] not in pseudo]
        if missing:
            raise ValueError(f"no pseudo-labels for {len(missing)} pool images, e.g. {missing[:3]}")
        self.items, self.pseudo = items, pseudo
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.acquired = acquired
        self.regions = (
            regions if isinstance(regions, RegionMaps) else RegionMaps("squares", regions)
        )
        # Without pseudo-labels (the supervised-only baseline) only acquired ground truth counts.
        self.pseudo_labels = pseudo_labels
        self.cache = cache or DecodeCache()

    def __len__(self) -> int:
        return len(self.items)

    def target(self, item: dict) -> np.ndarray:
        label_png, conf_png = self.pseudo[item["sample_id"]]
        regions = self.acquired.get(item["sample_id"], [])
        truth = known = None
        if regions:
            truth = self.cache.get(item["mask_uri"], load_mask)
            shape = (item["sample_id"], item["height"], item["width"])
            known = self.regions.of(*shape, cache=self.cache).mask(regions)
        label = decode_mask(label_png)
        if not self.pseudo_labels:
            target = np.full_like(label, IGNORE_INDEX)
            if known is not None:
                target[known] = truth[known]
            return target
        return compose_target(label, decode_mask(conf_png), self.thresholds, truth, known)

    def __getitem__(self, index: int) -> Decoded:
        item = self.items[index]
        return self.cache.get(item["image_uri"], load_image), self.target(item)


def collate_decoded(samples: list[Decoded]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A loader batch: (images (B, H, W, 3) uint8, targets (B, H, W) uint8, sizes (B, 2) long),
    padded to the largest image (image 0, target ignore), each sample's own size in ``sizes``.
    uint8 is a quarter of the bytes of float to pin and copy to the device; the one copy per
    image here is all the loader does beyond decoding."""
    height = max(image.shape[0] for image, _ in samples)
    width = max(image.shape[1] for image, _ in samples)
    images = np.zeros((len(samples), height, width, 3), dtype=np.uint8)
    targets = np.full((len(samples), height, width), IGNORE_INDEX, dtype=np.uint8)
    for i, (image, target) in enumerate(samples):
        if image.shape[:2] != target.shape:
            raise ValueError(f"image {image.shape[:2]} and target {target.shape} differ in size")
        images[i, : image.shape[0], : image.shape[1]] = image
        targets[i, : target.shape[0], : target.shape[1]] = target
    sizes = torch.tensor([image.shape[:2] for image, _ in samples], dtype=torch.long)
    return torch.from_numpy(images), torch.from_numpy(targets), sizes


def batch_to_device(batch, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A ``collate_decoded`` batch on ``device``: (images (B, 3, H, W) float in [0, 1], targets
    uint8, sizes (B, 2) on the CPU, where the augmentation's parameters are computed)."""
    images, targets, sizes = batch
    # Channels first while still uint8: the cheapest transpose, and contiguous for the gathers.
    images = images.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous()
    images = images.float().div_(255.0)
    return images, targets.to(device, non_blocking=True), sizes


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


def epoch_batches(
    dataset,
    batch_size: int,
    steps: int,
    seed: int,
    workers: int,
    weights: list[float] | None = None,
    pin_memory: bool = False,
):
    """One epoch of ``steps`` batches drawn with replacement (weighted when class-balanced), as
    ``collate_decoded`` batches."""
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
            collate_fn=collate_decoded,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(seed + 2),
        )
    )
