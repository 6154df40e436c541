"""Weak and strong augmentation of whole batches, on the device the training step runs on.

The loader only decodes images and composes targets (``data/training.py``); the step moves the
decoded batch to its device and augments it here, each sample with its own parameters, so the
CPUs feeding a GPU do not set its pace. Images are float (B, 3, H, W) in [0, 1]; masks (B, H, W)
hold class ids with ``IGNORE_INDEX`` for "no label", and anything the augmentation invents
(padding, a CutOut hole) is ignore in the mask, never a class. A batch of images of different
sizes arrives padded to its largest one, with each sample's own (height, width) in ``sizes``.

Randomness: every parameter is drawn on the CPU from the caller's ``torch.Generator`` (the
epoch's, from ``student.epoch_streams``), one fixed block of uniforms per sample and call,
whatever the probabilities, the image sizes or the device. The stream is then a pure function
of the seed and the batch sizes (a resumed epoch replays exactly), and only small index and
factor tensors travel to the device. The distributions are those of the per-sample CPU path
this replaced; ``tests/test_batch_augment.py`` compares their statistics.

Libraries, chosen by what fits and by what ``benchmarks/input_pipeline.py`` measures:

- Geometry (rescale, crop/pad, flip) is torch's own ``grid_sample`` on a separable per-sample
  grid, masks and unscaled samples gathered at the nearest source pixel (exact labels, ignore
  outside). kornia's ``warp_affine`` (what its geometric augmentations run) is the same
  ``grid_sample`` behind a 2x3 matrix, measured no faster (1-2x slower in our CPU runs), and
  it clamps at the batch's padded canvas, not at each sample's own size, and knows no "ignore"
  for masks. Scales lie in [0.5, 2], where bilinear sampling already averages the pixels an
  output pixel covers (at 0.5 exactly a 2x2 mean), so the old antialiased resize is not needed.
- Colour jitter and blur are kornia's functional ops (``kornia.enhance``,
  ``kornia.filters.gaussian_blur2d``): one factor or sigma per sample, torchvision's definitions
  (the old path's; ``tests/test_batch_augment.py`` checks they agree). Not the classes of
  ``kornia.augmentation``: given our parameters they run these same ops behind a
  version-specific params dict, and ``ColorJitter`` takes one op order for the whole batch,
  where each sample has its own; so the ops run here per slot of the order, each on the samples
  that have it there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation_with_gray_subtraction,
)
from kornia.filters import gaussian_blur2d
from torch import Tensor

from s4al_ray import IGNORE_INDEX

Pair = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class StrongAugment:
    """Distributions of the strong augmentation (the defaults are the method's).

    ``color_jitter`` is the strength s: brightness/contrast/saturation factors in [1-s/2, 1+s/2],
    hue shift in ±s/4 of the colour circle, in a random order per sample. ``interpolation``
    ("bilinear" or "nearest") applies to the image only; masks are always nearest. "nearest"
    keeps colours exact, which the alignment tests use.
    """

    scale: tuple[float, float] = (0.5, 2.0)
    flip_p: float = 0.5
    color_jitter: float = 0.5
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    cutout_p: float = 0.5
    cutout_frac: tuple[float, float] = (0.02, 0.25)
    interpolation: str = "bilinear"


STRONG = StrongAugment()
ASPECT = (0.5, 2.0)  # box aspect ratios (CutOut, CutMix), log-uniform
# Uniforms per sample: weak (crop y, crop x, flip); strong, one column per parameter below.
WEAK_DRAWS = 3
STRONG_COLUMNS = (
    "scale crop_y crop_x flip jitter brightness contrast saturation hue order0 order1 order2 "
    "order3 gray blur sigma cutout area aspect box_y box_x"
).split()


# -- random draws from a generator (on the CPU, whatever the device of the batch)


def uniforms(generator: torch.Generator, *shape: int) -> Tensor:
    """Uniform [0, 1) doubles on the CPU (drawn on the generator's device if that is CUDA)."""
    return torch.rand(
        shape, generator=generator, device=generator.device, dtype=torch.float64
    ).cpu()


def between(u: Tensor, bounds: tuple[float, float]) -> Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * u


def _index(u: Tensor, high: Tensor) -> Tensor:
    """Uniform integers in [0, high] from uniforms ``u`` (elementwise)."""
    return torch.minimum((u * (high + 1)).floor().long(), high)


def check_batch(images: Tensor, masks: Tensor) -> None:
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


def _sizes(images: Tensor, sizes: Tensor | None) -> Tensor:
    """(B, 2) long on the CPU: each sample's own (height, width) inside the batch's canvas."""
    if sizes is None:
        return torch.tensor(images.shape[-2:]).expand(images.shape[0], 2)
    return sizes.cpu().long()


# -- geometry: scale, then a crop window (padding where the image is smaller), then flip


def _window(u: Tensor, resized: Tensor, out: int) -> Tensor:
    """Window start in resized coordinates, uniform over the positions where the window lies
    inside the image, or the image inside the window when it is smaller (the rest is padding).
    The old path padded at random sides, then cropped at random: the same distribution."""
    slack = resized - out
    return torch.minimum(slack, torch.zeros_like(slack)) + _index(u, slack.abs())


def geometry(sizes: Tensor, factor: Tensor, crop_u: Tensor, flip: Tensor, crop) -> dict:
    """Per-sample geometry: the image rescaled by ``factor`` (sizes rounded), a ``crop``-sized
    window at offsets drawn from ``crop_u`` (B, 2), mirrored where ``flip``."""
    resized = (sizes.double() * factor[:, None]).round().clamp(min=1).long()
    offset = torch.stack([_window(crop_u[:, k], resized[:, k], crop[k]) for k in range(2)], 1)
    return {"sizes": sizes, "factor": factor, "resized": resized, "offset": offset, "flip": flip}


def _axis(geo: dict, k: int, out: int) -> tuple[Tensor, Tensor, Tensor]:
    """Along axis k (0 rows, 1 columns), per output pixel: the continuous source coordinate (for
    bilinear sampling), the nearest source pixel and whether it lies inside the image."""
    size, resized = geo["sizes"][:, k, None].double(), geo["resized"][:, k, None].double()
    pos = geo["offset"][:, k, None] + torch.arange(out)  # position in the resized image
    valid = (pos >= 0) & (pos < resized)
    scale = size / resized
    # Pixel centres map to pixel centres; clamped to the sample's own size, so a smaller image in
    # a padded batch never blends with the canvas beyond it.
    coord = ((pos + 0.5) * scale - 0.5).clamp(min=0.0).minimum(size - 1)
    nearest = ((pos + 0.5) * scale).floor().long().clamp(min=0).minimum(size.long() - 1)
    if k == 1:  # flip after the crop, as the old path did
        flip = geo["flip"][:, None]
        coord, nearest, valid = (torch.where(flip, t.flip(1), t) for t in (coord, nearest, valid))
    return coord, nearest, valid


def _gather(x: Tensor, flat: Tensor, crop) -> Tensor:
    """(B, C, H, W) -> (B, C, *crop): the pixels at ``flat`` (B, crop pixels) indices of each
    sample's flattened canvas (one gather: faster than 3-D advanced indexing)."""
    index = flat[:, None].expand(-1, x.shape[1], -1)
    return x.flatten(2).gather(2, index).view(*x.shape[:2], *crop)


def warp(images: Tensor, masks: Tensor, geo: dict, crop, bilinear: bool) -> Pair:
    """Apply ``geometry``: images bilinear (or nearest), masks nearest; outside the image, image
    0 and mask ignore."""
    device, (h, w) = images.device, images.shape[-2:]
    (ys, iy, vy), (xs, ix, vx) = _axis(geo, 0, crop[0]), _axis(geo, 1, crop[1])
    # Only per-axis vectors go to the device; the (B, H, W) products are formed there. Grid
    # coordinates: align_corners=False normalisation, computed in double.
    gx, gy = (((2 * c + 1) / n - 1).to(device, images.dtype) for c, n in ((xs, w), (ys, h)))
    iy, ix, vy, vx = (t.to(device) for t in (iy, ix, vy, vx))
    valid = vy[:, :, None] & vx[:, None, :]
    flat = (iy[:, :, None] * w + ix[:, None, :]).flatten(1)  # nearest pixel, flattened canvas
    out_masks = _gather(masks[:, None], flat, crop)[:, 0].masked_fill(~valid, IGNORE_INDEX)
    # Bilinear for rescaled samples; unscaled ones (and nearest) copy exact pixels, where
    # grid_sample's normalised coordinates would blend them by a rounding error.
    exact = (
        ~(geo["resized"] != geo["sizes"]).any(1) if bilinear else torch.ones(len(iy), dtype=bool)
    )
    if bool(exact.all()):
        out = _gather(images, flat, crop)
    else:
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), -1)
        out = F.grid_sample(
            images, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        if bool(exact.any()):
            at = exact.nonzero().flatten().to(device)
            out[at] = _gather(images[at], flat[at], crop)
    return out.masked_fill_(~valid[:, None], 0.0), out_masks


# -- photometric ops (image only), each on the samples that draw it


def _on(images: Tensor, select: Tensor, fn, *args: Tensor) -> None:
    """``images[select] = fn(images[select], *args[select])`` in place; nothing when none."""
    index = select.nonzero().flatten()
    if index.numel():
        at = index.to(images.device)
        images[at] = fn(images[at], *(a[index].to(images.device, images.dtype) for a in args))


def _hue(images: Tensor, shift: Tensor) -> Tensor:
    return adjust_hue(images, shift * (2 * math.pi))  # kornia takes radians, the draw turns


JITTER_OPS = (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_saturation_with_gray_subtraction,
    _hue,
)


def _grayscale(images: Tensor) -> Tensor:
    return TF.rgb_to_grayscale(images, num_output_channels=3)


def _blur_kernel(sigma_max: float, crop) -> int:
    """One kernel size for the batch: ±3 sigma of the widest sigma (each sample keeps its own
    sigma; the extra taps of the narrower ones weigh nothing); reflect padding needs it smaller
    than twice the image side."""
    return min(2 * math.ceil(3 * sigma_max) + 1, 2 * (min(crop) // 2) - 1)


def box_params(area: Tensor, aspect_u: Tensor, box_u: Tensor, size) -> Tensor:
    """(B, 4) long boxes (top, left, height, width) covering ``area`` of a ``size`` image, with
    a log-uniform aspect ratio, at a uniform position."""
    h, w = size
    aspect = torch.exp(between(aspect_u, (math.log(ASPECT[0]), math.log(ASPECT[1]))))
    box_h = torch.sqrt(area * h * w * aspect).round().clamp(1, h).long()
    box_w = torch.sqrt(area * h * w / aspect).round().clamp(1, w).long()
    top, left = _index(box_u[:, 0], h - box_h), _index(box_u[:, 1], w - box_w)
    return torch.stack([top, left, box_h, box_w], 1)


def box_region(boxes: Tensor, size, device) -> Tensor:
    """(B, H, W) bool, True inside each sample's box."""
    top, left, box_h, box_w = boxes.to(device).unbind(1)
    rows = torch.arange(size[0], device=device)[None, :, None]
    cols = torch.arange(size[1], device=device)[None, None, :]
    inside_rows = (rows >= top[:, None, None]) & (rows < (top + box_h)[:, None, None])
    inside_cols = (cols >= left[:, None, None]) & (cols < (left + box_w)[:, None, None])
    return inside_rows & inside_cols


# -- the pipelines


def weak_augment(
    images: Tensor, masks: Tensor, crop, generator: torch.Generator, sizes: Tensor | None = None
) -> Pair:
    """Random crop of ``crop`` (padding: image 0, mask ignore) and horizontal flip; pixels are
    copied, not resampled. Returns float images and long masks."""
    check_batch(images, masks)
    u = uniforms(generator, images.shape[0], WEAK_DRAWS)
    geo = geometry(_sizes(images, sizes), torch.ones(len(u)), u[:, :2], u[:, 2] < 0.5, crop)
    out_images, out_masks = warp(images, masks, geo, crop, bilinear=False)
    return out_images, out_masks.long()


def strong_params(
    batch: int,
    generator: torch.Generator,
    crop,
    sizes: Tensor,
    cfg: StrongAugment = STRONG,
) -> dict[str, Tensor]:
    """Every sample's strong-augmentation parameters (CPU tensors), from one (B, 21) block of
    uniforms: ``geometry`` plus jitter (apply, factors (B, 4): brightness, contrast,
    saturation, hue; order (B, 4)), gray, blur (and sigma), cutout (and box)."""
    u = uniforms(generator, batch, len(STRONG_COLUMNS))
    col = {name: u[:, i] for i, name in enumerate(STRONG_COLUMNS)}
    amount, hue = 0.5 * cfg.color_jitter, 0.25 * cfg.color_jitter
    crop_u = torch.stack([col["crop_y"], col["crop_x"]], 1)
    params = geometry(
        sizes, between(col["scale"], cfg.scale), crop_u, col["flip"] < cfg.flip_p, crop
    )
    factors = [between(col[k], (1 - amount, 1 + amount)) for k in STRONG_COLUMNS[5:8]]
    params.update(
        jitter=col["jitter"] < cfg.color_jitter_p,
        factors=torch.stack([*factors, between(col["hue"], (-hue, hue))], 1),
        order=u[:, 9:13].argsort(1),  # a uniform random permutation per sample
        gray=col["gray"] < cfg.grayscale_p,
        blur=col["blur"] < cfg.blur_p,
        sigma=between(col["sigma"], cfg.blur_sigma),
        cutout=col["cutout"] < cfg.cutout_p,
        box=box_params(
            between(col["area"], cfg.cutout_frac),
            col["aspect"],
            torch.stack([col["box_y"], col["box_x"]], 1),
            crop,
        ),
    )
    return params


def apply_strong(
    images: Tensor, masks: Tensor, crop, params: dict, cfg: StrongAugment = STRONG
) -> Pair:
    """Rescale, crop/pad, flip, colour jitter, grayscale, blur, CutOut with ``params``."""
    images, masks = warp(images, masks, params, crop, cfg.interpolation == "bilinear")
    # Photometric ops run after the crop: fewer pixels, and they never touch the mask.
    for slot in range(4):
        for op, fn in enumerate(JITTER_OPS):
            chosen = params["jitter"] & (params["order"][:, slot] == op)
            _on(images, chosen, fn, params["factors"][:, op])
    _on(images, params["gray"], _grayscale)
    kernel = _blur_kernel(cfg.blur_sigma[1], crop)

    def blur(x: Tensor, sigma: Tensor) -> Tensor:
        return gaussian_blur2d(x, kernel, torch.stack([sigma, sigma], 1), "reflect")

    if kernel >= 3:
        _on(images, params["blur"], blur, params["sigma"])
    images = images.clamp_(0.0, 1.0)
    hole = (
        box_region(params["box"], crop, images.device)
        & params["cutout"].to(images.device)[:, None, None]
    )
    return images.masked_fill(hole[:, None], 0.0), masks.masked_fill(hole, IGNORE_INDEX).long()


def strong_augment(
    images: Tensor,
    masks: Tensor,
    crop,
    generator: torch.Generator,
    sizes: Tensor | None = None,
    cfg: StrongAugment = STRONG,
) -> Pair:
    """``apply_strong`` with parameters drawn from ``generator``. Returns float images and long
    masks of size ``crop``."""
    check_batch(images, masks)
    params = strong_params(images.shape[0], generator, crop, _sizes(images, sizes), cfg)
    return apply_strong(images, masks, crop, params, cfg)
