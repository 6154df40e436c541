"""Tests for the built-in synthetic street-scene dataset (s4al_ray.data.synthetic)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from s4al_ray.data.synthetic import (
    MARKER_FILE,
    SYNTHETIC_CLASSES,
    generate_synthetic_dataset,
    render_scene,
)

NUM_CLASSES = len(SYNTHETIC_CLASSES)
# Non-square, non-default size so swapped height/width would be caught.
H, W = 48, 64


def _gen(root: Path, **kw) -> Path:
    params = dict(num_train=4, num_val=2, height=H, width=W, seed=0)
    params.update(kw)
    return Path(generate_synthetic_dataset(str(root), **params))


def _all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _gen(tmp_path_factory.mktemp("syn") / "ds")


@pytest.fixture(scope="module")
def scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    """40 scenes at the default resolution, for the statistical checks."""
    return [render_scene(np.random.default_rng([123, i]), 128, 160) for i in range(40)]


def test_classes() -> None:
    assert SYNTHETIC_CLASSES == (
        "road",
        "sidewalk",
        "building",
        "sky",
        "vegetation",
        "car",
        "pedestrian",
        "pole",
        "sign",
    )


def test_layout_and_decoding(small: Path) -> None:
    ids = [f"syn_{i:05d}" for i in range(6)]
    for sid in ids:
        with Image.open(small / "images" / f"{sid}.png") as im:
            assert im.mode == "RGB" and im.size == (W, H)
        with Image.open(small / "masks" / f"{sid}.png") as m:
            assert m.mode == "L" and m.size == (W, H)
            values = np.unique(np.asarray(m))
        assert set(values.tolist()) <= set(range(NUM_CLASSES))
    meta = yaml.safe_load((small / "classes.yaml").read_text())
    assert meta["classes"] == list(SYNTHETIC_CLASSES)
    assert len(meta["colors"]) == NUM_CLASSES and all(len(c) == 3 for c in meta["colors"])
    assert meta["ignore_index"] == 255
    marker = json.loads((small / MARKER_FILE).read_text())
    assert marker["seed"] == 0 and marker["height"] == H and marker["width"] == W
    assert not list(small.rglob("*.tmp*")) and not (small / ".synthetic.partial").exists()


def test_splits_disjoint_and_complete(small: Path) -> None:
    train = (small / "splits" / "train.txt").read_text().split()
    val = (small / "splits" / "val.txt").read_text().split()
    assert len(train) == 4 and len(val) == 2
    assert not set(train) & set(val)
    images = {p.stem for p in (small / "images").glob("*.png")}
    assert set(train) | set(val) == images


def test_a_test_split_follows_val_and_keeps_the_other_splits(small: Path, tmp_path: Path):
    assert not (small / "splits" / "test.txt").exists()  # none asked for: no test.txt
    assert "num_test" not in json.loads((small / MARKER_FILE).read_text())  # old markers hold
    root = _gen(tmp_path / "ds", num_test=3)
    test = (root / "splits" / "test.txt").read_text().split()
    assert len(test) == 3 and not set(test) & set((root / "splits" / "val.txt").read_text().split())
    for split in ("train", "val"):  # the same images as without a test split
        assert (root / "splits" / f"{split}.txt").read_text() == (
            small / "splits" / f"{split}.txt"
        ).read_text()
    from s4al_ray.data.folder import load_folder_dataset

    assert len(load_folder_dataset(str(root), 0).rows("test")) == 3


def test_deterministic_same_seed(small: Path, tmp_path: Path) -> None:
    again = _gen(tmp_path / "again")
    assert _all_files(again) == _all_files(small)


def test_workers_do_not_change_output(small: Path, tmp_path: Path) -> None:
    parallel = _gen(tmp_path / "par", workers=2)
    assert _all_files(parallel) == _all_files(small)


def test_different_seed_differs(small: Path, tmp_path: Path) -> None:
    other = _gen(tmp_path / "other", seed=1)
    for sid in ("syn_00000", "syn_00005"):
        assert (other / "images" / f"{sid}.png").read_bytes() != (
            small / "images" / f"{sid}.png"
        ).read_bytes()


def test_sample_independent_of_count(tmp_path: Path) -> None:
    five = _gen(tmp_path / "five", num_train=5, num_val=0)
    ten = _gen(tmp_path / "ten", num_train=8, num_val=2)
    for i in range(5):
        for sub in ("images", "masks"):
            name = f"{sub}/syn_{i:05d}.png"
            assert (five / name).read_bytes() == (ten / name).read_bytes()


def test_idempotent_no_rewrite(small: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in small.rglob("*") if p.is_file()}
    assert Path(generate_synthetic_dataset(str(small), 4, 2, H, W, seed=0)) == small
    after = {p: p.stat().st_mtime_ns for p in small.rglob("*") if p.is_file()}
    assert after == before


def test_mismatched_parameters_raise(small: Path) -> None:
    with pytest.raises(ValueError, match="data.root"):
        generate_synthetic_dataset(str(small), 4, 2, H, W, seed=7)
    with pytest.raises(ValueError, match="data.root"):
        generate_synthetic_dataset(str(small), 5, 2, H, W, seed=0)


def test_refuses_foreign_dataset(tmp_path: Path) -> None:
    (tmp_path / "classes.yaml").write_text("classes: [a, b]\n")
    with pytest.raises(ValueError, match="data.root"):
        generate_synthetic_dataset(str(tmp_path), 2, 1, H, W)


def test_resumes_after_interrupted_run(tmp_path: Path) -> None:
    root = _gen(tmp_path / "ds")
    reference = _all_files(root)
    # Simulate a crash before the marker: partial-run file present, marker missing.
    os.remove(root / MARKER_FILE)
    (root / ".synthetic.partial").write_text("{}")
    (root / "images" / "syn_00001.png").write_bytes(b"truncated")
    _gen(root)
    assert _all_files(root) == reference


def test_long_tailed_frequencies(scenes: list[tuple[np.ndarray, np.ndarray]]) -> None:
    counts = np.zeros(NUM_CLASSES)
    for _, mask in scenes:
        counts += np.bincount(mask.ravel(), minlength=256)[:NUM_CLASSES]
    assert counts.sum() == sum(m.size for _, m in scenes)  # no value outside range(9)
    freq = dict(zip(SYNTHETIC_CLASSES, counts / counts.sum()))
    for big in ("road", "building", "sky"):
        assert freq[big] > 0.10, freq
    for rare in ("pole", "sign"):
        assert 0 < freq[rare] < 0.02, freq
    assert freq["sign"] < freq["pole"] < freq["car"] < min(freq["road"], freq["building"])
    assert all(f > 0 for f in freq.values()), freq
    presence = np.mean([[np.any(m == k) for k in range(NUM_CLASSES)] for _, m in scenes], 0)
    assert presence[SYNTHETIC_CLASSES.index("sign")] >= 0.5
    assert presence[SYNTHETIC_CLASSES.index("pedestrian")] >= 0.5


def test_colour_alone_does_not_solve_it(scenes: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """A nearest-class-mean-colour pixel classifier must stay well below 90% accuracy."""
    fit, held = scenes[:20], scenes[20:]
    x = np.concatenate([im.reshape(-1, 3) for im, _ in fit]).astype(np.float64)
    y = np.concatenate([m.ravel() for _, m in fit])
    means = np.stack([x[y == k].mean(0) for k in range(NUM_CLASSES)])
    xt = np.concatenate([im.reshape(-1, 3) for im, _ in held]).astype(np.float64)
    yt = np.concatenate([m.ravel() for _, m in held])
    pred = ((xt[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    accuracy = float((pred == yt).mean())
    assert accuracy < 0.9, accuracy


def _mean_run(masks: list[np.ndarray], k: int) -> float:
    """Mean length of the horizontal runs of class ``k``: how wide its objects are drawn."""
    runs = []
    for m in masks:
        edges = np.diff(np.pad((m == k).astype(np.int8), ((0, 0), (1, 1))), axis=1)
        starts, ends = np.nonzero(edges == 1), np.nonzero(edges == -1)
        runs.append(ends[1] - starts[1])
    return float(np.concatenate(runs).mean())


def test_thin_scale_draws_fewer_larger_thin_objects_at_the_same_share() -> None:
    """``thin_scale`` s draws poles, signs and pedestrians s times wider and 1/s as often: the
    long tail keeps its share of the pixels, its objects become visible; 1.0 is the default
    drawing bit for bit."""
    rngs = lambda: [np.random.default_rng([5, i]) for i in range(60)]  # noqa: E731
    default = [render_scene(rng, 96, 128) for rng in rngs()]
    same = [render_scene(rng, 96, 128, 1.0) for rng in rngs()[:5]]
    wide = [render_scene(rng, 96, 128, 3.0) for rng in rngs()]
    for (im, m), (im1, m1) in zip(default, same):
        assert np.array_equal(im, im1) and np.array_equal(m, m1)
    masks, wide_masks = [m for _, m in default], [m for _, m in wide]

    def share(scene_masks, k: int) -> float:
        return float(np.mean([np.mean(m == k) for m in scene_masks]))

    for thin in ("pole", "sign", "pedestrian"):
        k = SYNTHETIC_CLASSES.index(thin)
        assert _mean_run(wide_masks, k) > 2 * _mean_run(masks, k), thin
        # Signs grow in both directions (s^2 the area, 1/s as many): s times their share.
        assert 0.5 * share(masks, k) < share(wide_masks, k) < 4 * share(masks, k), thin
        assert share(wide_masks, k) < 0.01, thin  # still the long tail


def test_thin_scale_is_part_of_the_marker(tmp_path: Path) -> None:
    root = _gen(tmp_path / "ds", thin_scale=1.5)
    assert json.loads((root / MARKER_FILE).read_text())["thin_scale"] == 1.5
    with pytest.raises(ValueError, match="data.root"):
        _gen(root)  # the default drawing is another dataset
    default = _gen(tmp_path / "default")
    assert "thin_scale" not in json.loads((default / MARKER_FILE).read_text())
