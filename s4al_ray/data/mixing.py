"""CutMix and ClassMix of a pool batch on the training device, after its augmentation.

Pasted pixels bring their labels with them, ignore included for CutMix; ClassMix pastes classes,
and ignore is not a class. Draws come from the caller's generator on the CPU (``augment.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from s4al_ray import IGNORE_INDEX
from s4al_ray.data.augment import Pair, between, box_params, box_region, check_batch, uniforms


def _partners(batch: int, generator: torch.Generator) -> Tensor:
    """A random derangement: one cycle through a random order, so no sample is its own source."""
    order = torch.randperm(batch, generator=generator, device=generator.device).cpu()
    source = torch.empty_like(order)
    source[order] = order.roll(-1)
    return source


def _paste(images: Tensor, masks: Tensor, source: Tensor, region: Tensor) -> Pair:
    """Copy ``region`` (B, H, W bool) of sample ``source[i]`` into sample i, image and mask."""
    source = source.to(images.device)
    mixed_images = torch.where(region[:, None], images[source], images)
    mixed_masks = torch.where(region, masks[source], masks)
    return mixed_images, mixed_masks


def cutmix(
    images: Tensor,
    masks: Tensor,
    generator: torch.Generator,
    p: float = 0.5,
    *,
    area: tuple[float, float] = (0.25, 0.5),
) -> Pair:
    """With probability p per sample, paste a random box from another sample of the batch.

    The mask box moves with the image box, ignore pixels included (they stay ignore).
    """
    check_batch(images, masks)
    batch = images.shape[0]
    if batch < 2:
        return images.clone(), masks.clone()
    source = _partners(batch, generator)
    apply = uniforms(generator, batch) < p
    u = uniforms(generator, batch, 4)  # area, aspect, top, left
    box = box_params(between(u[:, 0], area), u[:, 1], u[:, 2:], tuple(masks.shape[-2:]))
    region = box_region(box, masks.shape[-2:], masks.device)
    return _paste(images, masks, source, region & apply.to(masks.device)[:, None, None])


def classmix(images: Tensor, masks: Tensor, generator: torch.Generator, p: float = 0.5) -> Pair:
    """With probability p per sample, paste the pixels of half (rounded up) of the classes of
    another sample's mask. Ignore is not a class and is never pasted."""
    check_batch(images, masks)
    batch = images.shape[0]
    if batch < 2:
        return images.clone(), masks.clone()
    source = _partners(batch, generator)
    apply = uniforms(generator, batch) < p
    src_masks = masks[source.to(masks.device)]
    valid = src_masks != IGNORE_INDEX
    num_classes = int(masks[masks != IGNORE_INDEX].max()) + 1 if bool(valid.any()) else 0
    if num_classes == 0:
        return images.clone(), masks.clone()

    # Class presence per source mask; ignore goes to an extra column that is dropped.
    labels = torch.where(valid, src_masks, num_classes).flatten(1).long()
    present = torch.zeros(batch, num_classes + 1, dtype=torch.bool, device=masks.device)
    present.scatter_(1, labels, True)
    present = present[:, :num_classes]
    # Half the present classes at random: rank random keys, absent classes ranked last.
    keys = uniforms(generator, batch, num_classes).to(masks.device).masked_fill(~present, 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)
    half = (present.sum(dim=1, keepdim=True) + 1) // 2
    chosen = present & (rank < half)

    picked = chosen.gather(1, torch.where(valid, src_masks, 0).flatten(1).long()).view_as(valid)
    region = picked & valid & apply.to(masks.device)[:, None, None]
    return _paste(images, masks, source, region)


def mix_batch(images: Tensor, masks: Tensor, kind: str, generator: torch.Generator) -> Pair:
    """``train.mix``: "cutmix", "classmix" or "none" (unchanged)."""
    if kind == "cutmix":
        return cutmix(images, masks, generator)
    if kind == "classmix":
        return classmix(images, masks, generator)
    return images, masks
