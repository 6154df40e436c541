"""The folder layout: a user's own data, and the layout of the built-in synthetic dataset.

```
<root>/images/<id>.<png|jpg>   <root>/masks/<id>.png   <root>/classes.yaml
<root>/splits/train.txt, val.txt (optional: a seeded split is made and saved when absent)
```
"""

from __future__ import annotations

import os

import numpy as np
import yaml

from s4al_ray import storage
from s4al_ray.data.io import image_size
from s4al_ray.data.manifest import DatasetInfo, make_manifest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DatasetError(ValueError):
    """A dataset problem, naming the files involved and the fix."""


def _stem(uri: str) -> str:
    return os.path.splitext(uri.rstrip("/").rsplit("/", 1)[-1])[0]


def read_classes(root: str) -> tuple[list[str], int, list[list[int]] | None]:
    """(class names, ignore index, colours) from ``<root>/classes.yaml``; colours are None when
    absent or unusable (a palette is cosmetic: it never fails a dataset)."""
    uri = storage.join(root, "classes.yaml")
    if not storage.exists(uri):
        raise DatasetError(
            f"{uri} is missing: a folder dataset needs a classes.yaml with "
            "'classes: [name, ...]' (optional 'colors', 'ignore_index')"
        )
    data = yaml.safe_load(storage.read_text(uri)) or {}
    classes = data.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DatasetError(f"{uri}: 'classes' must be a non-empty list of names")
    return classes, int(data.get("ignore_index", 255)), _colors(data.get("colors"), len(classes))


def _colors(colors: object, num_classes: int) -> list[list[int]] | None:
    """One RGB per class (extra channels such as alpha dropped), or None."""
    if not isinstance(colors, list) or len(colors) != num_classes:
        return None
    try:
        palette = [[int(v) for v in c[:3]] for c in colors]
    except (TypeError, ValueError):
        return None
    return palette if all(len(c) == 3 for c in palette) else None


def _read_split(root: str, name: str) -> list[str] | None:
    uri = storage.join(root, "splits", f"{name}.txt")
    if not storage.exists(uri):
        return None
    return [line.strip() for line in storage.read_text(uri).splitlines() if line.strip()]


def _make_splits(
    root: str, ids: list[str], seed: int, val_frac: float = 0.2
) -> dict[str, list[str]]:
    order = np.random.default_rng(seed).permutation(len(ids))
    num_val = max(1, int(round(len(ids) * val_frac)))
    val = sorted(ids[i] for i in order[:num_val])
    train = sorted(ids[i] for i in order[num_val:])
    for name, members in (("train", train), ("val", val)):
        storage.write_text(storage.join(root, "splits", f"{name}.txt"), "\n".join(members) + "\n")
    return {"train": train, "val": val}


def load_folder_dataset(root: str, seed: int = 0) -> DatasetInfo:
    root = storage.absolute(root)
    classes, ignore, colors = read_classes(root)
    images = {
        _stem(u): u
        for u in storage.list_files(storage.join(root, "images"))
        if u.lower().endswith(IMAGE_SUFFIXES)
    }
    masks = {_stem(u): u for u in storage.list_files(storage.join(root, "masks"), ".png")}
    if not images:
        raise DatasetError(f"no images (*.png, *.jpg) under {storage.join(root, 'images')}")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise DatasetError(
            f"{len(missing)} images have no mask under "
            f"{storage.join(root, 'masks')}: {', '.join(missing[:5])}"
        )
    ids = sorted(images)
    splits = {name: _read_split(root, name) for name in ("train", "val", "test")}
    if splits["train"] is None:
        splits = _make_splits(root, ids, seed)
    rows = []
    for split, members in splits.items():
        for sample_id in members or []:
            if sample_id not in images:
                raise DatasetError(f"splits/{split}.txt lists {sample_id!r}, which has no image")
            height, width = image_size(images[sample_id])
            rows.append(
                {
                    "sample_id": sample_id,
                    "image_uri": images[sample_id],
                    "mask_uri": masks[sample_id],
                    "split": split,
                    "height": height,
                    "width": width,
                }
            )
    return DatasetInfo(make_manifest(rows), classes, ignore, colors=colors)
