"""The batched, on-device augmentation against the per-sample CPU path it replaced, and its
determinism: same distributions, one fixed stream of draws, batches that replay on a resume.

The per-sample path is read from git at the commit before the change (``OLD_COMMIT``) and run
with its random helpers wrapped, so every parameter it draws is recorded by name.
"""

from __future__ import annotations

import math
import subprocess
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from s4al_ray import IGNORE_INDEX
from s4al_ray.data.augment import STRONG, StrongAugment, apply_strong, strong_params
from s4al_ray.data.augment import strong_augment as batch_strong
from s4al_ray.data.io import encode_png
from s4al_ray.data.training import DecodeCache, LabeledImages, PoolImages, collate_decoded

OLD_COMMIT = "67e19fb2307d39122b4ea1c68f8654bf8a3e2549"  # per-sample augmentation in the loader
ROOT = __file__.rsplit("/tests/", 1)[0]
SIZE, CROP = (24, 32), (20, 28)  # image and crop: windows inside the image and padded ones
N = 2000
JITTER = ("brightness", "contrast", "saturation", "hue")
JITTER_TV = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def _old_module() -> types.ModuleType:
    try:
        source = subprocess.run(
            ["git", "show", f"{OLD_COMMIT}:s4al_ray/data/augment.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"needs the git history (commit {OLD_COMMIT[:7]})")
    module = types.ModuleType("old_augment")
    exec(compile(source, "old_augment.py", "exec"), module.__dict__)
    return module


def _old_draws(n: int) -> dict[str, np.ndarray]:
    """Parameters of ``n`` calls of the old per-sample ``strong_augment``, by name."""
    old = _old_module()
    calls: list[tuple[str, object]] = []  # (calling function, value drawn)

    def wrap(kind: str):
        original = getattr(old, kind)

        def recorded(*args):
            value = original(*args)
            frame = sys._getframe(1)
            while frame.f_code.co_name.startswith("<"):  # a comprehension's frame (3.11)
                frame = frame.f_back
            calls.append((frame.f_code.co_name, float(value)))
            return value

        return recorded

    for kind in ("_uniform", "_coin", "_randint"):
        setattr(old, kind, wrap(kind))

    class Torch:  # the old module's ``torch``, recording the jitter order
        def __getattr__(self, name):
            return getattr(torch, name)

        def randperm(self, *args, **kwargs):
            order = torch.randperm(*args, **kwargs)
            calls.append(("_color_jitter", order.argsort().tolist()))
            return order

    old.torch = Torch()
    generator = torch.Generator().manual_seed(1)
    image, mask = torch.rand(3, *SIZE), torch.zeros(SIZE, dtype=torch.long)
    rows = []
    for _ in range(n):
        calls.clear()
        old.strong_augment(image, mask, CROP, generator)
        rows.append(_parse(list(calls)))
    names = {k for row in rows for k in row}
    return {k: np.array([r[k] for r in rows if k in r], dtype=float) for k in names}


def _parse(calls: list) -> dict:
    """One old call's draws, in the order the old code made them, as named parameters."""
    by_caller: dict[str, list] = {}
    for caller, value in calls:
        by_caller.setdefault(caller, []).append(value)
    factor = by_caller["_rescale"][0]
    pad = by_caller.get("_pad_to", [0, 0])
    top, left = by_caller["_crop_to"]
    jitter, gray, blur, cutout = by_caller["strong_augment"]  # its coins, in order
    row = {
        "factor": factor,
        "offset_y": top - pad[0],  # the crop window's start in the rescaled image
        "offset_x": left - pad[1],
        "flip": by_caller["_flip"][0],
        "jitter": jitter,
        "gray": gray,
        "blur": blur,
        "cutout": cutout,
    }
    if jitter:
        *factors, order = by_caller["_color_jitter"]
        row.update(zip(JITTER, factors))
        row.update({f"position{op}": order[op] for op in range(4)})
    if blur:
        row["sigma"] = by_caller["_blur"][0]
    if cutout:
        area, log_aspect, box_top, box_left = by_caller["_cutout"]
        (h, w), aspect = CROP, math.exp(log_aspect)
        box_h = min(h, max(1, round(math.sqrt(area * h * w * aspect))))
        box_w = min(w, max(1, round(math.sqrt(area * h * w / aspect))))
        row.update(cutout_area=box_h * box_w / (h * w), box_top=box_top, box_left=box_left)
    return row


def _new_draws(n: int) -> dict[str, np.ndarray]:
    sizes = torch.tensor(SIZE).expand(n, 2)
    p = strong_params(n, torch.Generator().manual_seed(2), CROP, sizes)
    jitter, blur, cutout = p["jitter"], p["blur"], p["cutout"]
    box = p["box"][cutout].double()
    position = p["order"].argsort(1)[jitter]  # where each op falls in its sample's order
    out = {
        "factor": p["factor"],
        "offset_y": p["offset"][:, 0],
        "offset_x": p["offset"][:, 1],
        "flip": p["flip"],
        "jitter": jitter,
        "gray": p["gray"],
        "blur": blur,
        "cutout": cutout,
        **{k: p["factors"][jitter, i] for i, k in enumerate(JITTER)},
        **{f"position{op}": position[:, op] for op in range(4)},
        "sigma": p["sigma"][blur],
        "cutout_area": box[:, 2] * box[:, 3] / (CROP[0] * CROP[1]),
        "box_top": box[:, 0],
        "box_left": box[:, 1],
    }
    return {k: v.double().numpy() for k, v in out.items()}


def test_parameter_statistics_match_the_per_sample_path() -> None:
    old, new = _old_draws(N), _new_draws(N)
    assert set(old) == set(new)
    for name in sorted(old):
        a, b = old[name], new[name]
        assert len(a) > 150 and len(b) > 150, name
        # Means (probabilities for the coins) within 4 standard errors of each other.
        error = math.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(a.mean() - b.mean()) <= 4 * error + 1e-12, (name, a.mean(), b.mean())
        if not set(np.unique(a)) <= {0.0, 1.0}:  # spreads too, for the continuous ones
            assert abs(a.std() - b.std()) <= 0.1 * a.std(), (name, a.std(), b.std())
    # The configured probabilities, too (not only agreement between the paths).
    for name, p in (("flip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("blur", 0.5), ("cutout", 0.5)):
        assert abs(new[name].mean() - p) < 4 * math.sqrt(p * (1 - p) / N), name


def test_photometric_ops_are_torchvisions_per_sample() -> None:
    """Jitter (each sample in its own order) and blur give what torchvision's functional ops,
    the old path's, give one sample at a time with the same parameters."""
    images = torch.rand(8, 3, 20, 28, generator=torch.Generator().manual_seed(5))
    masks = torch.zeros(8, 20, 28, dtype=torch.long)
    still = dict(scale=(1.0, 1.0), flip_p=0.0, cutout_p=0.0, grayscale_p=0.0)
    for cfg in (
        StrongAugment(**still, blur_p=0.0, color_jitter_p=1.0),
        StrongAugment(**still, blur_p=1.0, color_jitter_p=0.0),
    ):
        params = strong_params(
            8, torch.Generator().manual_seed(6), (20, 28), torch.tensor([[20, 28]] * 8), cfg
        )
        out, _ = apply_strong(images.clone(), masks, (20, 28), params, cfg)
        for i in range(8):
            x, factors = images[i], params["factors"][i].tolist()
            if cfg.color_jitter_p:
                for op in params["order"][i].tolist():
                    x = JITTER_TV[op](x, factors[op])
            else:
                sigma = float(params["sigma"][i])
                kernel = 2 * math.ceil(3 * sigma) + 1  # the old path's kernel, ±3 sigma
                x = TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
            assert torch.allclose(out[i], x.clamp(0, 1), atol=2e-3, rtol=0), (i, cfg)


def test_draws_are_one_fixed_block_per_sample() -> None:
    """The stream does not depend on probabilities, image sizes or contents: what follows a
    call is the same whatever the batch held."""
    images, masks = torch.rand(3, 3, 30, 40), torch.zeros(3, 30, 40, dtype=torch.long)
    states = []
    for cfg, sizes in (
        (STRONG, None),
        (StrongAugment(color_jitter_p=0.0, blur_p=1.0, cutout_p=0.0), None),
        (STRONG, torch.tensor([[30, 40], [10, 12], [25, 40]])),
    ):
        generator = torch.Generator().manual_seed(3)
        batch_strong(images, masks, (16, 16), generator, sizes, cfg)
        states.append(generator.get_state())
    assert all(torch.equal(states[0], s) for s in states[1:])


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_a_sample_does_not_depend_on_its_batch(interpolation: str) -> None:
    """Images of different sizes share a padded batch; each comes out as it would alone."""
    g = torch.Generator().manual_seed(4)
    shapes = [(30, 40), (18, 26), (30, 22)]
    images = [torch.rand(3, *s, generator=g) for s in shapes]
    masks = [torch.randint(0, 5, s, generator=g) for s in shapes]
    batch = collate_decoded(
        [
            ((255 * i).round().byte().permute(1, 2, 0).numpy(), m.byte().numpy())
            for i, m in zip(images, masks)
        ]
    )
    canvas = batch[0].permute(0, 3, 1, 2).float() / 255
    cfg = StrongAugment(interpolation=interpolation)
    params = strong_params(3, g, (20, 24), batch[2], cfg)
    together = apply_strong(canvas, batch[1], (20, 24), params, cfg)
    for i in range(3):
        alone = apply_strong(
            canvas[i : i + 1, :, : shapes[i][0], : shapes[i][1]],
            batch[1][i : i + 1, : shapes[i][0], : shapes[i][1]],
            (20, 24),
            {k: v[i : i + 1] for k, v in params.items()},
            cfg,
        )
        assert torch.equal(together[1][i], alone[1][0])
        assert torch.allclose(together[0][i], alone[0][0], atol=1e-4, rtol=0)


# -- the loader: decoded uint8 pairs, no randomness; the step replays an epoch exactly


def test_collate_pads_with_ignore_and_black() -> None:
    samples = [
        (np.full((4, 6, 3), 9, np.uint8), np.full((4, 6), 2, np.uint8)),
        (np.full((5, 3, 3), 7, np.uint8), np.full((5, 3), 1, np.uint8)),
    ]
    images, targets, sizes = collate_decoded(samples)
    assert images.shape == (2, 5, 6, 3) and images.dtype == torch.uint8
    assert sizes.tolist() == [[4, 6], [5, 3]]
    assert (targets[0, 4:] == IGNORE_INDEX).all() and (images[0, 4:] == 0).all()
    assert (targets[1, :, 3:] == IGNORE_INDEX).all() and (images[1, :, 3:] == 0).all()
    assert (targets[0, :4] == 2).all() and (images[1, :, :3] == 7).all()
    with pytest.raises(ValueError, match="differ in size"):
        collate_decoded([(np.zeros((4, 6, 3), np.uint8), np.zeros((4, 5), np.uint8))])


NUM_CLASSES, IMAGE = 4, (24, 30)


def _sets():
    from s4al_ray.student import TrainingSets

    g = np.random.default_rng(0)
    cache = DecodeCache()
    items = []
    for k in range(6):
        item = {"sample_id": f"s{k}", "image_uri": f"mem://i{k}", "mask_uri": f"mem://m{k}"}
        item.update(height=IMAGE[0], width=IMAGE[1])
        cache.arrays[item["image_uri"]] = g.integers(0, 256, (*IMAGE, 3), dtype=np.uint8)
        cache.arrays[item["mask_uri"]] = g.integers(0, NUM_CLASSES, IMAGE, dtype=np.uint8)
        items.append(item)
    pseudo = {
        i["sample_id"]: (
            encode_png(g.integers(0, NUM_CLASSES, IMAGE, dtype=np.uint8)),
            encode_png(g.integers(0, 256, IMAGE, dtype=np.uint8)),
        )
        for i in items
    }
    thresholds = [0.5] * NUM_CLASSES
    labeled = LabeledImages(items[:3], cache)
    pool = PoolImages(items[3:], pseudo, thresholds, {"s3": [0]}, 8, cache=cache)
    return TrainingSets(labeled, 2, pool, None), thresholds


class _Teacher(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Conv2d(3, NUM_CLASSES, 1)

    def forward(self, x):
        return {"logits": self.head(x)}


@pytest.mark.parametrize("method", ["self_training", "mean_teacher"])
def test_a_resumed_epoch_replays_its_augmented_batches(method: str) -> None:
    """What the step trains on is a function of (seed, round, rank, epoch) and the batches: an
    epoch run after another (uninterrupted) and the same epoch run first (a resumed worker)
    see the same augmented, mixed images and targets, and leave the generator alike (ReCo
    draws next)."""
    from s4al_ray.student import augment_batches, epoch_streams

    sets, thresholds = _sets()
    torch.manual_seed(0)
    ema = _Teacher() if method == "mean_teacher" else None
    train = SimpleNamespace(steps_per_epoch=3, pseudo_batch=2, strong_aug=True, mix="classmix")
    job = SimpleNamespace(
        seed=5, round=1, loader_workers=0, crop=(16, 20), thresholds=thresholds, train=train
    )

    def epoch(e: int):
        generator, labeled, pool = epoch_streams(job, sets, 0, e, torch.device("cpu"))
        out = []
        for _ in range(train.steps_per_epoch):
            (xl, yl), (xu, yu) = augment_batches(
                job, next(labeled), next(pool), torch.device("cpu"), generator, ema
            )
            assert xl.shape == (2, 3, 16, 20) and yu.shape == (2, 16, 20)
            assert yu.dtype == torch.long and set(yu.unique().tolist()) <= {0, 1, 2, 3, 255}
            out += [xl, yl, xu, yu]
        return out, generator.get_state()

    epoch(0)
    after, state_after = epoch(1)
    resumed, state_resumed = epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(after, resumed))
    assert torch.equal(state_after, state_resumed)
    other, _ = epoch(2)
    assert not torch.equal(after[2], other[2])  # a new epoch draws anew
