"""Paired image/mask augmentation for segmentation, driven by an explicit ``torch.Generator``.

Parameters are drawn from the caller's generator (torchvision's random transforms would use the
global RNG, which makes a data worker's output depend on everything else it ran), then applied
with ``torchvision.transforms.v2.functional`` on ``tv_tensors.Image`` / ``tv_tensors.Mask`` so
that every geometric op moves the mask with the image and resizes masks with nearest neighbour.

Images are float (3, H, W) in [0, 1]; masks are long (H, W) with ``IGNORE_INDEX`` for "no label".
Anything the augmentation invents (padding, a CutOut hole) is ignore in the mask, never a class.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode

from s4al_ray import IGNORE_INDEX

Pair = tuple[Tensor, Tensor]


# -- random draws from a generator


def _rand(generator: torch.Generator, *shape: int) -> Tensor:
    """Uniform [0, 1) floats on the CPU (cheap parameter draws; the generator's device if CUDA)."""
    return torch.rand(shape, generator=generator, device=generator.device).cpu()


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(_rand(generator, 1))


def _coin(generator: torch.Generator, p: float) -> bool:
    # Always draw, even for p in {0, 1}, so the stream does not depend on the probabilities.
    return float(_rand(generator, 1)) < p


def _randint(generator: torch.Generator, high: int) -> int:
    """Uniform integer in [0, high]."""
    return min(int(float(_rand(generator, 1)) * (high + 1)), high)


# -- paired geometric ops


def _wrap(image: Tensor, mask: Tensor) -> Pair:
    if image.dim() != 3 or mask.dim() != 2 or image.shape[-2:] != mask.shape:
        raise ValueError(
            f"expected image (3,H,W) and mask (H,W), got {tuple(image.shape)}, {tuple(mask.shape)}"
        )
    return tv_tensors.Image(image), tv_tensors.Mask(mask.long())


def _unwrap(image: Tensor, mask: Tensor) -> Pair:
    return image.as_subclass(Tensor), mask.as_subclass(Tensor)


def _flip(image: Tensor, mask: Tensor, generator: torch.Generator, p: float = 0.5) -> Pair:
    if _coin(generator, p):
        return TF.horizontal_flip(image), TF.horizontal_flip(mask)
    return image, mask


def _pad_to(image: Tensor, mask: Tensor, size: tuple[int, int], generator: torch.Generator) -> Pair:
    """Pad up to at least ``size`` (image 0, mask ignore), splitting the padding at random sides."""
    pad_h, pad_w = max(size[0] - image.shape[-2], 0), max(size[1] - image.shape[-1], 0)
    if pad_h == 0 and pad_w == 0:
        return image, mask
    top, left = _randint(generator, pad_h), _randint(generator, pad_w)
    padding = [left, top, pad_w - left, pad_h - top]
    return TF.pad(image, padding, fill=0.0), TF.pad(mask, padding, fill=IGNORE_INDEX)


def _crop_to(
    image: Tensor, mask: Tensor, size: tuple[int, int], generator: torch.Generator
) -> Pair:
    """Random crop of exactly ``size``, padding first when the input is smaller."""
    image, mask = _pad_to(image, mask, size, generator)
    top = _randint(generator, image.shape[-2] - size[0])
    left = _randint(generator, image.shape[-1] - size[1])
    return TF.crop(image, top, left, *size), TF.crop(mask, top, left, *size)


def _rescale(
    image: Tensor,
    mask: Tensor,
    scale: tuple[float, float],
    generator: torch.Generator,
    interpolation: InterpolationMode,
) -> Pair:
    factor = _uniform(generator, *scale)
    size = [max(1, round(image.shape[-2] * factor)), max(1, round(image.shape[-1] * factor))]
    image = TF.resize(image, size, interpolation=interpolation, antialias=True)
    return image, TF.resize(mask, size)  # masks always resize with nearest neighbour


# -- photometric ops (image only)


def _color_jitter(image: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """Brightness/contrast/saturation in [1-s/2, 1+s/2] and hue in ±s/4, in a random order."""
    amount, hue = 0.5 * strength, 0.25 * strength
    factors = [_uniform(generator, 1 - amount, 1 + amount) for _ in range(3)]
    shift = _uniform(generator, -hue, hue)
    ops = [
        lambda x: TF.adjust_brightness(x, factors[0]),
        lambda x: TF.adjust_contrast(x, factors[1]),
        lambda x: TF.adjust_saturation(x, factors[2]),
        lambda x: TF.adjust_hue(x, shift),
    ]
    for i in torch.randperm(len(ops), generator=generator, device=generator.device).tolist():
        image = ops[i](image)
    return image


def _blur(image: Tensor, sigma_range: tuple[float, float], generator: torch.Generator) -> Tensor:
    sigma = _uniform(generator, *sigma_range)
    # Kernel covers ±3 sigma; reflect padding needs it smaller than twice the image side.
    kernel = min(2 * math.ceil(3 * sigma) + 1, 2 * (min(image.shape[-2:]) // 2) - 1)
    return TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma]) if kernel >= 3 else image


def _cutout(
    image: Tensor, mask: Tensor, frac: tuple[float, float], generator: torch.Generator
) -> Pair:
    """Zero a random rectangle covering ``frac`` of the image; the hole is ignore in the mask."""
    (h, w), area = image.shape[-2:], _uniform(generator, *frac)
    aspect = math.exp(_uniform(generator, math.log(0.5), math.log(2.0)))
    box_h = min(h, max(1, round(math.sqrt(area * h * w * aspect))))
    box_w = min(w, max(1, round(math.sqrt(area * h * w / aspect))))
    top, left = _randint(generator, h - box_h), _randint(generator, w - box_w)
    image, mask = image.clone(), mask.clone()
    image[..., top : top + box_h, left : left + box_w] = 0.0
    mask[..., top : top + box_h, left : left + box_w] = IGNORE_INDEX
    return image, mask


# -- per-sample pipelines


def weak_augment(
    image: Tensor, mask: Tensor, crop_size: tuple[int, int], generator: torch.Generator
) -> Pair:
    """Random horizontal flip and random crop (padding: image 0, mask ignore)."""
    image, mask = _wrap(image, mask)
    image, mask = _flip(image, mask, generator)
    image, mask = _crop_to(image, mask, tuple(crop_size), generator)
    return _unwrap(image, mask)


def strong_augment(
    image: Tensor,
    mask: Tensor,
    crop_size: tuple[int, int],
    generator: torch.Generator,
    *,
    scale: tuple[float, float] = (0.5, 2.0),
    color_jitter: float = 0.5,
    color_jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    blur_p: float = 0.5,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    cutout_p: float = 0.5,
    cutout_frac: tuple[float, float] = (0.02, 0.25),
    flip_p: float = 0.5,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
) -> Pair:
    """Rescale, crop/pad, flip, colour jitter, grayscale, blur, CutOut.

    ``color_jitter`` is the strength s: brightness/contrast/saturation factors in [1-s/2, 1+s/2],
    hue shift in ±s/4. ``interpolation`` applies to the image only (masks are always nearest);
    NEAREST keeps colours exact, which the alignment tests use.
    """
    image, mask = _wrap(image, mask)
    image, mask = _rescale(image, mask, scale, generator, interpolation)
    image, mask = _crop_to(image, mask, tuple(crop_size), generator)
    image, mask = _flip(image, mask, generator, flip_p)
    # Photometric ops run after the crop: fewer pixels, and they never touch the mask.
    if _coin(generator, color_jitter_p):
        image = _color_jitter(image, color_jitter, generator)
    if _coin(generator, grayscale_p):
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    if _coin(generator, blur_p):
        image = _blur(image, blur_sigma, generator)
    image = image.clamp(0.0, 1.0)
    if _coin(generator, cutout_p):
        image, mask = _cutout(image, mask, cutout_frac, generator)
    return _unwrap(image, mask)


# -- batch mixing


def _partners(batch: int, generator: torch.Generator) -> Tensor:
    """A random derangement: one cycle through a random order, so no sample is its own source."""
    order = torch.randperm(batch, generator=generator, device=generator.device).cpu()
    source = torch.empty_like(order)
    source[order] = order.roll(-1)
    return source


def _check_batch(images: Tensor, masks: Tensor) -> None:
    if (
        images.dim() != 4
        or masks.dim() != 3
        or images.shape[-2:] != masks.shape[-2:]
        or images.shape[0] != masks.shape[0]
    ):
        raise ValueError(
            f"expected images (B,3,H,W) and masks (B,H,W), got "
            f"{tuple(images.shape)}, {tuple(masks.shape)}"
        )


def _paste(images: Tensor, masks: Tensor, source: Tensor, region: Tensor) -> Pair:
    """Copy ``region`` (B, H, W bool) of sample ``source[i]`` into sample i, image and mask."""
    source = source.to(images.device)
    mixed_images = torch.where(region[:, None], images[source], images)
    mixed_masks = torch.where(region, masks[source], masks)
    return mixed_images, mixed_masks


def _box_masks(
    batch: int, size: tuple[int, int], area: tuple[float, float], generator: torch.Generator
) -> Tensor:
    """(B, H, W) bool, one random rectangle per sample covering a fraction ``area`` of it."""
    h, w = size
    frac = area[0] + (area[1] - area[0]) * _rand(generator, batch)
    aspect = torch.exp(math.log(0.5) + math.log(4.0) * _rand(generator, batch))
    box_h = torch.sqrt(frac * h * w * aspect).round().clamp(1, h).long()
    box_w = torch.sqrt(frac * h * w / aspect).round().clamp(1, w).long()
    top = (_rand(generator, batch) * (h - box_h + 1)).long().clamp_max(h - box_h)
    left = (_rand(generator, batch) * (w - box_w + 1)).long().clamp_max(w - box_w)
    rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    inside_rows = (rows >= top[:, None, None]) & (rows < (top + box_h)[:, None, None])
    inside_cols = (cols >= left[:, None, None]) & (cols < (left + box_w)[:, None, None])
    return inside_rows & inside_cols


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
    _check_batch(images, masks)
    batch = images.shape[0]
    if batch < 2:
        return images.clone(), masks.clone()
    source = _partners(batch, generator)
    apply = _rand(generator, batch) < p
    region = _box_masks(batch, tuple(masks.shape[-2:]), area, generator) & apply[:, None, None]
    return _paste(images, masks, source, region.to(masks.device))


def classmix(images: Tensor, masks: Tensor, generator: torch.Generator, p: float = 0.5) -> Pair:
    """With probability p per sample, paste the pixels of half (rounded up) of the classes of
    another sample's mask. Ignore is not a class and is never pasted."""
    _check_batch(images, masks)
    batch = images.shape[0]
    if batch < 2:
        return images.clone(), masks.clone()
    source = _partners(batch, generator)
    apply = _rand(generator, batch) < p
    src_masks = masks[source.to(masks.device)]
    valid = src_masks != IGNORE_INDEX
    num_classes = int(masks[masks != IGNORE_INDEX].max()) + 1 if bool(valid.any()) else 0
    if num_classes == 0:
        return images.clone(), masks.clone()

    # Class presence per source mask; ignore goes to an extra column that is dropped.
    labels = torch.where(valid, src_masks, num_classes).flatten(1)
    present = torch.zeros(batch, num_classes + 1, dtype=torch.bool, device=masks.device)
    present.scatter_(1, labels, True)
    present = present[:, :num_classes]
    # Half the present classes at random: rank random keys, absent classes ranked last.
    keys = _rand(generator, batch, num_classes).to(masks.device).masked_fill(~present, 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)
    half = (present.sum(dim=1, keepdim=True) + 1) // 2
    chosen = present & (rank < half)

    picked = chosen.gather(1, torch.where(valid, src_masks, 0).flatten(1)).view_as(valid)
    region = picked & valid & apply.to(masks.device)[:, None, None]
    return _paste(images, masks, source, region)
