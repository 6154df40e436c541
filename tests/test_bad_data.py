"""Bad dataset inputs get a DatasetError naming the file (or key) and the fix, never a traceback,
and the user's dataset root is never written to (every file's sha256 is the same afterwards).

Covers: split files (missing, partial, overlapping, unknown ids), the prepared cache keyed by its
sources, classes.yaml, EXIF orientation, unreadable and odd image/mask files, Unicode paths, and
an S3 endpoint that cannot be reached. Needs no Ray.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
import time
import unicodedata
import zlib

import numpy as np
import pytest
from PIL import Image

from s4al_ray.config_schema import DataConfig
from s4al_ray.data.check import check_dataset, require_clean
from s4al_ray.data.folder import DatasetError, load_folder_dataset
from s4al_ray.data.io import decode_mask, image_size, load_image, load_mask
from s4al_ray.data.registry import load_dataset
from s4al_ray.data.scan import header_size

H, W = 16, 24
QUIET = lambda _line: None  # noqa: E731


def _png(path: str, array: np.ndarray, **kwargs) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def make_folder(root: str, count: int = 6, ids: list[str] | None = None, seed: int = 0) -> None:
    """3 classes, HxW RGB images, masks 0..2 with every class present; no split files."""
    rng = np.random.default_rng(seed)
    _write(f"{root}/classes.yaml", "classes: [road, car, sky]\nignore_index: 255\n")
    for sid in ids or [f"img{k}" for k in range(count)]:
        _png(f"{root}/images/{sid}.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        mask = rng.integers(0, 3, (H, W), dtype=np.uint8)
        mask[0, :3] = [0, 1, 2]
        _png(f"{root}/masks/{sid}.png", mask)


def digests(root: str) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path (new files show up too)."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return out


def data_cfg(root: str, cache: str | None = None, resize: bool = False, **kw) -> DataConfig:
    size = {"resize_height": 8, "resize_width": 12} if resize else {}
    return dataclasses.replace(
        DataConfig(),
        kind="folder",
        root=str(root),
        cache_dir=str(cache or root + "_cache"),
        **size,
        **kw,
    )


def _bump(path: str) -> None:
    """Make a rewrite visible to the cache even on a coarse-mtime filesystem."""
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**10))


def _ids(info, split: str) -> list[str]:
    return [r["sample_id"] for r in info.rows(split)]


# -- 1. Split files


def test_no_split_files_are_seeded_in_memory_and_nothing_is_written(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root, count=10)
    before = digests(root)
    first = load_folder_dataset(root, seed=3)
    again = load_folder_dataset(root, seed=3)
    assert not os.path.exists(f"{root}/splits")
    assert digests(root) == before
    assert _ids(first, "val") == _ids(again, "val") and len(_ids(first, "val")) == 2
    everything = sorted(_ids(first, "train") + _ids(first, "val"))
    assert everything == [f"img{k}" for k in range(10)]


def test_val_only_split_is_completed_without_touching_the_given_files(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root, count=8)
    _write(f"{root}/splits/val.txt", "img6\nimg7\n")
    _write(f"{root}/splits/test.txt", "img5\n")
    before = digests(root)
    info = load_folder_dataset(root, seed=0)
    assert _ids(info, "val") == ["img6", "img7"] and _ids(info, "test") == ["img5"]
    assert _ids(info, "train") == [f"img{k}" for k in range(5)]  # no val/test image leaks in
    assert digests(root) == before
    assert sorted(os.listdir(f"{root}/splits")) == ["test.txt", "val.txt"]


def test_test_only_split_seeds_train_and_val_from_the_rest(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root, count=10)
    _write(f"{root}/splits/test.txt", "img0\nimg1\n")
    before = digests(root)
    info = load_folder_dataset(root, seed=1)
    assert _ids(info, "test") == ["img0", "img1"]
    rest = sorted(_ids(info, "train") + _ids(info, "val"))
    assert rest == [f"img{k}" for k in range(2, 10)] and len(_ids(info, "val")) == 2
    assert digests(root) == before


def test_train_without_val_is_refused_saying_what_to_add(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root)
    _write(f"{root}/splits/train.txt", "img0\nimg1\n")
    before = digests(root)
    with pytest.raises(DatasetError) as err:
        load_folder_dataset(root)
    text = str(err.value)
    assert f"{root}/splits/train.txt is given but {root}/splits/val.txt is missing" in text
    assert "add val.txt listing the validation ids" in text
    assert digests(root) == before


def test_misnamed_split_files_are_refused(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root)
    _write(f"{root}/splits/training.txt", "img0\n")
    _write(f"{root}/splits/validation.txt", "img1\n")
    with pytest.raises(DatasetError, match="training.txt, validation.txt but none of train.txt"):
        load_folder_dataset(root)


def test_an_id_in_two_splits_names_both_files(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root)
    _write(f"{root}/splits/train.txt", "img0\nimg1\nimg2\n")
    _write(f"{root}/splits/val.txt", "img3\nimg1\n")
    before = digests(root)
    with pytest.raises(DatasetError) as err:
        load_folder_dataset(root)
    text = str(err.value)
    assert (
        f"'img1' is listed in two splits, {root}/splits/train.txt line 2 and "
        f"{root}/splits/val.txt line 2" in text
    )
    assert "remove it from one" in text
    assert digests(root) == before


def test_split_ids_without_image_name_file_and_line(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root)
    _write(f"{root}/splits/train.txt", "img0\n\nimg1.png\nimg2\nimg2\n")
    _write(f"{root}/splits/val.txt", "img3\nimgg4\n")
    before = digests(root)
    with pytest.raises(DatasetError) as err:
        load_folder_dataset(root)
    text = str(err.value)
    assert f"{root}/splits/train.txt line 3: 'img1.png' has no image" in text
    assert "(write 'img1': an id is the file name without folder or extension)" in text
    assert f"{root}/splits/train.txt line 5: 'img2' is listed twice (first at line 4)" in text
    assert f"{root}/splits/val.txt line 2: 'imgg4' has no image" in text
    assert "did you mean 'img4'?" in text
    assert text.startswith("3 problem(s) in the split files")
    assert digests(root) == before


def test_prepared_folder_split_does_not_follow_the_experiment_seed(tmp_path):
    """The made-up split of a resized folder dataset is the loader's fixed one whatever the
    experiment seed, and the cache serves it."""
    root = str(tmp_path / "f")
    make_folder(root, count=10)
    before = digests(root)
    for seed in (1, 2, 1):
        info = load_dataset(data_cfg(root, resize=True), seed=seed, log=QUIET)
        assert _ids(info, "val") == _ids(load_folder_dataset(root), "val")
    assert digests(root) == before


# -- 2. The prepared cache is keyed by its sources; errors name the source


def test_bad_source_mask_is_named_and_a_fixed_source_is_prepared_again(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root)
    bad = f"{root}/masks/img3.png"
    _png(bad, np.full((H, W), 42, np.uint8))
    before = digests(root)
    data = data_cfg(root, str(tmp_path / "cache"), resize=True)
    info = load_dataset(data, seed=0, log=QUIET)
    with pytest.raises(DatasetError) as err:
        require_clean(info, QUIET)
    text = str(err.value)
    assert f"label values: {bad} (prepared copy {tmp_path / 'cache'}" in text  # the source first
    assert "values 42" in text
    assert digests(root) == before

    fixed = np.zeros((H, W), np.uint8)
    fixed[:, : W // 2] = 1
    _png(bad, fixed)
    _bump(bad)
    lines: list[str] = []
    again = load_dataset(data, seed=0, log=lines.append)
    assert any("the source changed" in line for line in lines), lines
    assert any("(100%, 5 already done)" in line for line in lines), lines  # only img3 redone
    require_clean(again, QUIET)
    mask_uri = next(r["mask_uri"] for r in again.manifest.to_pylist() if r["sample_id"] == "img3")
    assert set(np.unique(load_mask(mask_uri))) == {0, 1}
    # Nothing changed since: the cache is used as it is, without re-preparing.
    lines.clear()
    load_dataset(data, seed=0, log=lines.append)
    assert not lines


def test_unreadable_source_fails_the_build_by_source_name_until_fixed(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root)
    bad = f"{root}/masks/img2.png"
    with open(bad, "rb") as handle:
        good = handle.read()
    with open(bad, "wb") as handle:
        handle.write(good[: len(good) // 2])
    before = digests(root)
    data = data_cfg(root, str(tmp_path / "cache"), resize=True)
    for _ in range(2):  # the failure repeats while the source is bad
        with pytest.raises(DatasetError) as err:
            load_dataset(data, seed=0, log=QUIET)
        assert "1 samples could not be prepared" in str(err.value)
        assert f"{bad}: unreadable or truncated mask" in str(err.value)
    assert digests(root) == before
    with open(bad, "wb") as handle:
        handle.write(good)
    _bump(bad)
    info = load_dataset(data, seed=0, log=QUIET)
    assert check_dataset(info).ok


def test_changed_classes_yaml_updates_the_cache(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root)
    data = data_cfg(root, str(tmp_path / "cache"), resize=True)
    assert load_dataset(data, seed=0, log=QUIET).classes == ["road", "car", "sky"]
    _write(f"{root}/classes.yaml", "classes: [road, vehicle, sky, extra]\n")
    _bump(f"{root}/classes.yaml")
    assert load_dataset(data, seed=0, log=QUIET).classes == ["road", "vehicle", "sky", "extra"]


# -- 3. classes.yaml

CLASSES_CASES = {
    "list": ("- road\n- car\n", ["holds a list, but must be a mapping", "under a 'classes:' key"]),
    "invalid yaml": ("classes: [road, car\n", ["not valid YAML"]),
    "duplicate key": (
        "classes: [road, car]\nclasses: [sky]\n",
        ["line 2: duplicate key 'classes' (first at line 1)"],
    ),
    "unknown key": (
        "clases: [road, car]\n",
        ["unknown key 'clases' (did you mean 'classes'?)", "classes, colors, ignore_index"],
    ),
    "duplicate name": (
        "classes: [road, car, road]\n",
        ["class name 'road' is given twice (ids 0 and 2)", "must be unique"],
    ),
    "ignore not int": (
        "classes: [road, car]\nignore_index: void\n",
        ["ignore_index must be an integer 0-255", "'void'"],
    ),
    "ignore float": ("classes: [road, car]\nignore_index: 1e-3\n", ["not 0.001"]),
    "ignore bool": ("classes: [road, car]\nignore_index: yes\n", ["not True"]),
    "ignore range": ("classes: [road, car]\nignore_index: 256\n", ["256 is outside 0-255"]),
    "ignore is a class": (
        "classes: [road, car, sky]\nignore_index: 1\n",
        ["ignore_index 1 is the id of class 'car' (class ids are 0-2)", "normally 255"],
    ),
    "empty": ("", ["is empty: list the class names"]),
    "mapping of classes": ("classes: {0: road, 1: car}\n", ["not a mapping"]),
    "number as name": ("classes: [road, 7]\n", ["class 1 is 7, not a name"]),
}


@pytest.mark.parametrize("case", sorted(CLASSES_CASES))
def test_bad_classes_yaml_names_the_file_and_the_fix(tmp_path, case):
    text, needles = CLASSES_CASES[case]
    root = str(tmp_path / "f")
    make_folder(root)
    _write(f"{root}/classes.yaml", text)
    before = digests(root)
    with pytest.raises(DatasetError) as err:
        load_folder_dataset(root)
    message = str(err.value)
    assert f"{root}/classes.yaml" in message
    for needle in needles:
        assert needle in message, message
    assert digests(root) == before


def test_valid_classes_yaml_variants(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root)
    _write(
        f"{root}/classes.yaml", "classes: [road, car, sky]\nignore_index: 3\ncolors: [[1, 2, 3]]\n"
    )
    info = load_folder_dataset(root)
    assert info.ignore_index == 3 and info.colors is None  # a bad palette is only cosmetic


# -- 4. EXIF orientation


def _exif_jpeg(path: str, array: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=95, exif=exif.tobytes())


def test_exif_rotated_jpeg_is_read_upright_and_reported(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root, count=4)
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)  # 16x24 as stored
    os.remove(f"{root}/images/img0.png")
    _exif_jpeg(f"{root}/images/img0.jpg", stored, 6)  # rotate 90: displayed 24x16
    upright = np.zeros((W, H), np.uint8)
    upright[0, :3] = [0, 1, 2]
    _png(f"{root}/masks/img0.png", upright)  # drawn on the displayed image
    _write(f"{root}/splits/train.txt", "img0\nimg1\n")
    _write(f"{root}/splits/val.txt", "img2\nimg3\n")
    before = digests(root)
    uri = f"{root}/images/img0.jpg"
    assert image_size(uri) == (W, H) and header_size(uri) == (W, H)
    raw = np.asarray(Image.open(uri).convert("RGB"))  # the stored pixels, unrotated
    np.testing.assert_array_equal(load_image(uri), np.rot90(raw, k=-1))  # 90 degrees clockwise
    info = load_folder_dataset(root)
    row = next(r for r in info.manifest.to_pylist() if r["sample_id"] == "img0")
    assert (row["height"], row["width"]) == (W, H)
    report = check_dataset(info)
    assert report.ok, report.format()
    warning = next(w for w in report.warnings if "EXIF orientation" in w)
    assert warning.startswith("1 file(s) have an EXIF orientation other than 1")
    assert f"{uri} (6: rotate 90 CW)" in warning
    # The resized copy is upright, so the prepare step is what says that the source was turned.
    lines: list[str] = []
    prepared = load_dataset(data_cfg(root, str(tmp_path / "cache"), resize=True), 0, lines.append)
    assert require_clean(prepared, QUIET).ok
    assert any(
        "[prepare] warning: 1 source image(s) have an EXIF orientation" in line
        and f"{uri} (6: rotate 90 CW)" in line
        for line in lines
    ), lines
    assert digests(root) == before


def test_exif_rotation_that_breaks_the_mask_is_an_error(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root, count=4)
    rng = np.random.default_rng(2)
    os.remove(f"{root}/images/img1.png")
    _exif_jpeg(f"{root}/images/img1.jpg", rng.integers(0, 256, (H, W, 3), dtype=np.uint8), 8)
    _write(f"{root}/splits/train.txt", "img0\nimg1\n")
    _write(f"{root}/splits/val.txt", "img2\nimg3\n")
    before = digests(root)
    report = check_dataset(load_folder_dataset(root))  # masks/img1.png is 16x24, as stored
    assert len(report.errors) == 1, report.format()
    error = report.errors[0]
    assert error.startswith(f"size mismatch: {root}/masks/img1.png: mask is 16x24 (HxW)")
    assert "once its EXIF orientation 8 (rotate 270 CW) is applied" in error
    assert "rotate the mask to match, or re-save the image upright" in error
    assert any("img1.jpg (8: rotate 270 CW)" in w for w in report.warnings)
    # The resized cache says the same, naming the source files.
    with pytest.raises(DatasetError, match=r"masks/img1.png: mask is 16x24 but image .*img1.jpg"):
        load_dataset(data_cfg(root, str(tmp_path / "cache"), resize=True), seed=0, log=QUIET)
    assert digests(root) == before


# -- 5. Unreadable and odd files


def _bomb_png() -> bytes:
    """A valid PNG header claiming 20000x20000 pixels (no real pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


UNREADABLE = {
    "empty": (b"", "the file is empty (0 bytes)"),
    "not an image": (b"hello, this is text\n", "not an image Pillow can read"),
    "truncated header": (None, "images/img0.png: "),  # the first 30 bytes of a PNG
    "decompression bomb": (_bomb_png(), "decompression-bomb guard allows at most 178,956,970"),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_unreadable_image_header_is_a_named_error(tmp_path, case):
    root = str(tmp_path / "f")
    make_folder(root)
    path = f"{root}/images/img0.png"
    data, needle = UNREADABLE[case]
    if data is None:
        with open(path, "rb") as handle:
            data = handle.read()[:30]
    with open(path, "wb") as handle:
        handle.write(data)
    before = digests(root)
    with pytest.raises(DatasetError) as err:
        load_folder_dataset(root)
    text = str(err.value)
    assert text.startswith("1 image(s) cannot be read") and f"{path}: " in text
    assert needle in text, text
    assert digests(root) == before


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_unreadable_files_in_the_check(tmp_path, case):
    """Files that go bad after loading: the check names each, as image and as mask."""
    root = str(tmp_path / "f")
    make_folder(root)
    info = load_folder_dataset(root)
    data, needle = UNREADABLE[case]
    for path in (f"{root}/images/img1.png", f"{root}/masks/img2.png"):
        content = data
        if content is None:
            with open(path, "rb") as handle:
                content = handle.read()[:30]
        with open(path, "wb") as handle:
            handle.write(content)
    before = digests(root)
    report = check_dataset(info)
    assert len(report.errors) == 2, report.format()
    image_error, mask_error = report.errors
    assert image_error.startswith(f"unreadable image: {root}/images/img1.png: ")
    assert mask_error.startswith(f"unreadable mask: {root}/masks/img2.png: ")
    if case != "truncated header":
        assert needle in image_error and needle in mask_error
    assert digests(root) == before


def _save(path: str, image: Image.Image, **kwargs) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, **kwargs)


def test_odd_but_valid_modes_are_read(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root, count=7)
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    img = f"{root}/images"
    # A JPEG called .png, a CMYK JPEG, palette, grey+alpha, opaque RGBA, 16-bit grey.
    _save(f"{img}/img0.png", Image.fromarray(rgb), format="JPEG")
    os.remove(f"{img}/img1.png")
    _save(f"{img}/img1.jpg", Image.fromarray(rgb).convert("CMYK"), format="JPEG")
    _save(f"{img}/img2.png", Image.fromarray(rgb).convert("P"))
    _save(f"{img}/img3.png", Image.fromarray(rgb).convert("LA"))
    _save(f"{img}/img4.png", Image.fromarray(rgb).convert("RGBA"))
    grey16 = Image.fromarray((rng.integers(0, 65536, (H, W))).astype(np.uint16))
    _save(f"{img}/img5.png", grey16)
    # A palette mask: its indices are the class ids, whatever colours the palette gives them.
    indices = np.asarray(Image.open(f"{root}/masks/img6.png"))
    palette_mask = Image.fromarray(indices, mode="L").convert("P")
    palette_mask.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200] + [0] * 759)
    _save(f"{root}/masks/img6.png", palette_mask)
    # A 16-bit mask whose values fit 0..255 is accepted.
    _save(f"{root}/masks/img5.png", Image.fromarray(indices.astype(np.uint16)))
    before = digests(root)
    info = load_folder_dataset(root)
    for row in info.manifest.to_pylist():
        image = load_image(row["image_uri"])
        assert image.shape == (H, W, 3) and image.dtype == np.uint8, row
    np.testing.assert_array_equal(load_mask(f"{root}/masks/img6.png"), indices)
    report = check_dataset(info)
    assert report.ok, report.format()
    assert not any("transparent" in w for w in report.warnings), report.warnings
    assert digests(root) == before


def test_transparent_rgba_warns_and_drops_alpha(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root)
    rgba = np.random.default_rng(4).integers(0, 256, (H, W, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    path = f"{root}/images/img2.png"
    _png(path, rgba)
    before = digests(root)
    info = load_folder_dataset(root)
    np.testing.assert_array_equal(load_image(path), rgba[..., :3])
    report = check_dataset(info)
    assert report.ok
    warning = next(w for w in report.warnings if "transparent" in w)
    assert "alpha is dropped" in warning and path in warning
    assert digests(root) == before


BAD_MASKS = {
    "16-bit values": (
        lambda: Image.fromarray(np.full((H, W), 300, np.uint16)),
        "mask values 300..300 do not fit uint8",
    ),
    "colour mask": (
        lambda: Image.fromarray(np.zeros((H, W, 3), np.uint8)),
        "mask has mode RGB; a mask holds one class id per pixel",
    ),
    "grey + alpha": (lambda: Image.new("LA", (W, H)), "mask has mode LA"),
}


@pytest.mark.parametrize("case", sorted(BAD_MASKS))
def test_bad_mask_modes_are_named(tmp_path, case):
    root = str(tmp_path / "f")
    make_folder(root)
    make, needle = BAD_MASKS[case]
    path = f"{root}/masks/img1.png"
    _save(path, make())
    before = digests(root)
    report = check_dataset(load_folder_dataset(root))
    assert len(report.errors) == 1, report.format()
    assert report.errors[0].startswith(f"unreadable mask: {path}: ") and needle in report.errors[0]
    with pytest.raises(DatasetError, match=needle):
        load_mask(path)
    assert digests(root) == before


def test_jpeg_mask_warns(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root)
    path = f"{root}/masks/img0.png"
    mask = np.zeros((H, W), np.uint8)
    mask[:, :8], mask[:, 8:16] = 1, 2
    _save(path, Image.fromarray(mask), format="JPEG", quality=100)
    report = check_dataset(load_folder_dataset(root))
    assert any("mask(s) are JPEG data" in w and path in w for w in report.warnings), report.warnings


def test_duplicate_ids_by_extension_are_refused(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root)
    _save(f"{root}/images/img0.jpg", Image.new("RGB", (W, H)))
    with pytest.raises(DatasetError, match=r"img0.jpg and .*img0.png are both images for sample"):
        load_folder_dataset(root)


def test_unicode_and_spaces_in_paths_and_ids(tmp_path):
    root = str(tmp_path / "my data" / "Straßen ünï 道路")
    ids = ["café 1", "道路 2", "img 3", "naïve-4", "x y 5", "zé 6"]
    make_folder(root, ids=ids)
    # A split file typed in NFC while a file name is decomposed (NFD), as macOS writes them.
    nfd = unicodedata.normalize("NFD", "zé 6")
    for sub in ("images", "masks"):
        os.rename(f"{root}/{sub}/zé 6.png", f"{root}/{sub}/{nfd}.png")
    _write(f"{root}/splits/val.txt", "café 1\nzé 6\n")
    before = digests(root)
    info = load_folder_dataset(root)
    assert _ids(info, "val") == ["café 1", "zé 6"]
    assert sorted(_ids(info, "train")) == sorted(["道路 2", "img 3", "naïve-4", "x y 5"])
    for row in info.manifest.to_pylist():
        assert load_image(row["image_uri"]).shape == (H, W, 3)
        assert load_mask(row["mask_uri"]).shape == (H, W)
    report = check_dataset(info)
    assert report.ok and not any("in no split" in w for w in report.warnings), report.format()
    prepared = load_dataset(data_cfg(root, str(tmp_path / "c ache"), resize=True), 0, log=QUIET)
    assert require_clean(prepared, QUIET).ok
    assert sorted(_ids(prepared, "val")) == ["café 1", "zé 6"]
    assert digests(root) == before


# -- 6. S3 that cannot be reached


def test_unreachable_s3_endpoint_is_a_named_error(monkeypatch):
    monkeypatch.setenv("S4AL_S3_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    start = time.monotonic()
    for load in (
        lambda: load_dataset(data_cfg("s3://bucket/x", "s3://bucket/cache"), 0, log=QUIET),
        lambda: load_folder_dataset("s3://bucket/x"),
    ):
        with pytest.raises(DatasetError) as err:
            load()
        text = str(err.value)
        assert text.startswith("cannot access the dataset at s3://bucket/x (bucket 'bucket', ")
        assert "endpoint http://127.0.0.1:9" in text
        assert "Check that the endpoint is reachable (s3_endpoint in the config" in text
        assert "credentials" in text
    assert time.monotonic() - start < 15


def test_in_memory_decode_errors_name_no_file():
    with pytest.raises(DatasetError, match="^not an image Pillow can read"):
        decode_mask(b"nope")
