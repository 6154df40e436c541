"""Paired augmentation: the mask must follow the image, and invented pixels must be ignore.

Test images are colour-coded: pixel colour = PALETTE[class], so alignment is checked by reading
the class back from the colour. Palette colours are never black, so black means padding or hole.
The augmentation is batched (``data/augment.py``); each check runs on a batch of samples.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from s4al_ray import IGNORE_INDEX
from s4al_ray.data.augment import StrongAugment, strong_augment, weak_augment
from s4al_ray.data.mixing import classmix, cutmix

NUM_CLASSES = 6
PALETTE = 0.2 + 0.8 * torch.rand(NUM_CLASSES, 3, generator=torch.Generator().manual_seed(0))
IGNORE_COLOUR = torch.tensor([0.1, 0.1, 0.1])  # under ignore pixels; never checked
# Photometric ops off, so colours stay exact.
NO_COLOUR = dict(color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
BATCH = 6


def _strong(**kwargs) -> StrongAugment:
    return StrongAugment(**{**NO_COLOUR, **kwargs})


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _block_mask(
    seed: int, h: int = 48, w: int = 64, block: int = 8, ignore: bool = True
) -> torch.Tensor:
    """Random classes on a grid of blocks, some blocks ignore."""
    g = _gen(seed)
    grid = torch.randint(0, NUM_CLASSES, (h // block, w // block), generator=g)
    if ignore:
        grid[torch.rand(grid.shape, generator=g) < 0.15] = IGNORE_INDEX
    return grid.repeat_interleave(block, 0).repeat_interleave(block, 1)


def _paint(mask: torch.Tensor) -> torch.Tensor:
    """Colour image for a (H, W) or (B, H, W) mask: (3, H, W) or (B, 3, H, W)."""
    colours = torch.cat([PALETTE, IGNORE_COLOUR[None]])
    idx = torch.where(mask == IGNORE_INDEX, NUM_CLASSES, mask)
    return colours[idx].movedim(-1, -3).contiguous()


def _assert_aligned(
    image: torch.Tensor, mask: torch.Tensor, where: torch.Tensor | None = None, atol: float = 0.0
) -> int:
    """Every labelled pixel (within ``where``) shows its class colour; returns the count checked."""
    check = mask != IGNORE_INDEX
    if where is not None:
        check &= where
    expected = PALETTE[mask[check]]  # (n, 3)
    actual = image.movedim(-3, -1)[check]
    assert torch.allclose(actual, expected, atol=atol, rtol=0.0)
    return int(check.sum())


def _black(image: torch.Tensor) -> torch.Tensor:
    return (image == 0).all(dim=-3)


def _uniform_neighbourhood(mask: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Pixels whose (2r+1)^2 window holds one class and no ignore, away from the image border;
    ``mask`` (B, H, W)."""
    m = mask.float()[:, None]
    k = 2 * radius + 1
    hi = F.max_pool2d(m, k, stride=1, padding=radius)
    lo = -F.max_pool2d(-m, k, stride=1, padding=radius)
    keep = (hi == lo)[:, 0] & (mask != IGNORE_INDEX)
    keep[:, :radius], keep[:, -radius:] = False, False
    keep[:, :, :radius], keep[:, :, -radius:] = False, False
    return keep


def _masks(seed: int, n: int = BATCH, **kwargs) -> torch.Tensor:
    return torch.stack([_block_mask(seed * 100 + i, **kwargs) for i in range(n)])


# -- weak


@pytest.mark.parametrize("seed", range(2))
def test_weak_keeps_alignment(seed: int) -> None:
    masks = _masks(seed)
    images, out_masks = weak_augment(_paint(masks), masks, (32, 40), _gen(seed))
    assert images.shape == (BATCH, 3, 32, 40) and out_masks.shape == (BATCH, 32, 40)
    assert out_masks.dtype == torch.long
    assert all(_assert_aligned(images[i], out_masks[i]) > 0 for i in range(BATCH))


def test_weak_pads_with_ignore_and_black() -> None:
    masks = _masks(1, h=24, w=32, ignore=False)
    images, out_masks = weak_augment(_paint(masks), masks, (40, 48), _gen(1))
    padded = out_masks == IGNORE_INDEX
    assert (padded.flatten(1).sum(1) == 40 * 48 - 24 * 32).all()
    assert torch.equal(padded, _black(images))
    _assert_aligned(images, out_masks)


# -- strong


@pytest.mark.parametrize("seed", range(3))
def test_strong_keeps_alignment_exactly_with_nearest(seed: int) -> None:
    masks = _masks(seed)
    cfg = _strong(cutout_p=0.5, interpolation="nearest")
    images, out_masks = strong_augment(_paint(masks), masks, (40, 48), _gen(seed), cfg=cfg)
    assert images.shape == (BATCH, 3, 40, 48) and out_masks.shape == (BATCH, 40, 48)
    assert all(_assert_aligned(images[i], out_masks[i]) > 0 for i in range(BATCH))
    # Black pixels are padding or hole; either way ignore.
    assert (out_masks[_black(images)] == IGNORE_INDEX).all()


@pytest.mark.parametrize("seed", range(3))
def test_strong_bilinear_aligned_away_from_boundaries(seed: int) -> None:
    masks = _masks(seed, block=12)
    images, out_masks = strong_augment(
        _paint(masks), masks, (40, 48), _gen(seed), cfg=_strong(cutout_p=0.0)
    )
    where = _uniform_neighbourhood(out_masks)
    checked = _assert_aligned(images, out_masks, where=where, atol=1e-4)
    assert checked > 50 * BATCH


def test_strong_cutout_hole_is_ignore() -> None:
    masks = _masks(2, ignore=False)
    cfg = _strong(scale=(1.0, 1.0), cutout_p=1.0, cutout_frac=(0.05, 0.2))
    for seed in range(3):
        images, out_masks = strong_augment(_paint(masks), masks, (48, 64), _gen(seed), cfg=cfg)
        hole = _black(images)
        # Nothing else is ignore here, so the hole and the ignore pixels coincide exactly.
        assert torch.equal(hole, out_masks == IGNORE_INDEX)
        share = hole.float().mean((1, 2))
        assert ((share > 0.03) & (share < 0.22)).all()
        _assert_aligned(images, out_masks)


def test_strong_padding_is_ignore() -> None:
    masks = _masks(3, ignore=False)
    cfg = _strong(scale=(0.5, 0.5), cutout_p=0.0, interpolation="nearest")
    images, out_masks = strong_augment(_paint(masks), masks, (48, 64), _gen(3), cfg=cfg)
    padded = out_masks == IGNORE_INDEX
    assert (padded.flatten(1).sum(1) == 48 * 64 - 24 * 32).all()
    assert torch.equal(padded, _black(images))


def test_strong_photometric_stays_in_range_and_leaves_mask() -> None:
    masks = _masks(4)
    cfg = StrongAugment(
        color_jitter_p=1.0, grayscale_p=1.0, blur_p=1.0, cutout_p=0.0, scale=(1.0, 1.0)
    )
    images, out_masks = strong_augment(_paint(masks), masks, (40, 48), _gen(4), cfg=cfg)
    assert images.min() >= 0 and images.max() <= 1
    assert torch.allclose(images[:, 0], images[:, 1]) and torch.allclose(images[:, 1], images[:, 2])
    assert set(out_masks.unique().tolist()) <= set(masks.unique().tolist())


def test_photometric_ops_change_the_image() -> None:
    """Each op on its own moves pixels (none is silently a no-op), and only the image."""
    masks = _masks(6, ignore=False)
    images = _paint(masks)
    base = dict(scale=(1.0, 1.0), flip_p=0.0, cutout_p=0.0, blur_sigma=(1.0, 2.0))
    plain, _ = strong_augment(images, masks, (48, 64), _gen(5), cfg=_strong(**base))
    for op in ("color_jitter_p", "grayscale_p", "blur_p"):
        cfg = _strong(**base, **{op: 1.0})
        out, out_masks = strong_augment(images, masks, (48, 64), _gen(5), cfg=cfg)
        assert (out - plain).abs().flatten(1).amax(1).min() > 0.01, op
        assert torch.equal(out_masks, masks.long())


# -- determinism


def test_same_seed_same_output() -> None:
    masks = _masks(5)
    images = _paint(masks)
    for fn in (weak_augment, strong_augment):
        a, b, c = (fn(images, masks, (40, 48), _gen(s)) for s in (7, 7, 8))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.equal(a[0], c[0])
    masks = torch.stack([_block_mask(s) for s in range(4)])
    images = _paint(masks)
    for fn in (cutmix, classmix):
        a, b = fn(images, masks, _gen(9), p=1.0), fn(images, masks, _gen(9), p=1.0)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# -- batch mixing


def _batch(seed: int = 0, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    masks = torch.stack([_block_mask(seed * 10 + i) for i in range(n)])
    return _paint(masks), masks


def _partner(out_mask: torch.Tensor, masks: torch.Tensor, i: int) -> int:
    """The one other sample that every changed pixel of sample i was copied from."""
    changed = out_mask != masks[i]
    candidates = [
        j for j in range(len(masks)) if j != i and torch.equal(out_mask[changed], masks[j][changed])
    ]
    assert candidates, "changed pixels do not come from a single other sample"
    return candidates[0]


@pytest.mark.parametrize("mix", [cutmix, classmix])
def test_mixing_keeps_pairs_aligned_and_invents_no_class(mix) -> None:
    images, masks = _batch()
    out_images, out_masks = mix(images, masks, _gen(0), p=1.0)
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    assert _assert_aligned(out_images, out_masks) > 0
    assert set(out_masks.unique().tolist()) <= set(masks.unique().tolist())
    assert not torch.equal(out_masks, masks)  # p=1: something was pasted


def test_mixing_with_p_zero_is_identity() -> None:
    images, masks = _batch(1)
    for mix in (cutmix, classmix):
        out_images, out_masks = mix(images, masks, _gen(0), p=0.0)
        assert torch.equal(out_images, images) and torch.equal(out_masks, masks)


def test_cutmix_pastes_one_box_from_another_sample() -> None:
    images, masks = _batch(2)
    # Unique per-pixel ids make every copied pixel visible, ignore included.
    ids = torch.arange(masks.numel()).view_as(masks)
    _, out_ids = cutmix(images, ids, _gen(3), p=1.0)
    for i in range(len(ids)):
        j = _partner(out_ids[i], ids, i)
        rows, cols = torch.nonzero(out_ids[i] != ids[i], as_tuple=True)
        box = torch.zeros_like(out_ids[i], dtype=torch.bool)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert torch.equal(out_ids[i][box], ids[j][box])  # a full rectangle, not scattered pixels


def test_classmix_pastes_whole_classes_never_ignore() -> None:
    images, masks = _batch(3)
    _, out_masks = classmix(images, masks, _gen(4), p=1.0)
    for i in range(len(masks)):
        j = _partner(out_masks[i], masks, i)
        source = masks[j]
        pasted = set(out_masks[i][out_masks[i] != masks[i]].unique().tolist())
        assert IGNORE_INDEX not in pasted
        for c in pasted:  # a chosen class comes over completely
            assert (out_masks[i][source == c] == c).all()
        n_classes = len(set(source.unique().tolist()) - {IGNORE_INDEX})
        assert len(pasted) <= (n_classes + 1) // 2
        # Where the source is ignore, the target keeps its own label.
        keep = source == IGNORE_INDEX
        assert torch.equal(out_masks[i][keep], masks[i][keep])
