"""Scanning a published dataset's raw files: the helpers cityscapes.py and camvid.py build on.

Listing trees, pairing images with masks, reading image sizes from headers and the label table
that sends raw mask values to class ids. What they find is a :class:`DatasetInfo` of the files as
they are, label table attached; :mod:`s4al_ray.data.prepare` turns it into the prepared cache.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import pyarrow.fs as pafs

from s4al_ray import IGNORE_INDEX, storage
from s4al_ray.data.folder import DatasetError
from s4al_ray.data.io import image_size
from s4al_ray.data.manifest import DatasetInfo, make_manifest


def label_lut(mapping: dict[int, int], ignore: int = IGNORE_INDEX) -> np.ndarray:
    """256-entry uint8 table: ``mapping`` where given, ``ignore`` for every other value."""
    lut = np.full(256, ignore, dtype=np.uint8)
    for raw, cls in mapping.items():
        lut[raw] = cls
    return lut


def list_tree(uri: str, suffix: str) -> list[str]:
    """Files anywhere under ``uri`` whose names end with ``suffix``, sorted, as URIs."""
    fs, path = storage.filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    found = sorted(
        i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix)
    )
    return [storage.S3_PREFIX + p if storage.is_s3(uri) else p for p in found]


def header_size(uri: str, head_bytes: int = 1 << 16) -> tuple[int, int]:
    """(height, width) as decoded, from the first bytes of the file: one small read, even on S3
    (:func:`s4al_ray.data.io.image_size`; a DatasetError naming the file if unreadable)."""
    return image_size(uri, head_bytes)


def _size_or_error(uri: str) -> tuple[int, int] | str:
    try:
        return header_size(uri)
    except DatasetError as err:  # names the file
        return str(err)


def io_workers() -> int:
    """Threads for per-file work (scanning here, writing the cache in prepare.py). Threads, not
    processes: the work is reads (S3) and Pillow/zlib C code."""
    return min(8, (os.cpu_count() or 1) + 2)


def pair_files(images: dict[str, str], masks: dict[str, str], where: str) -> list[str]:
    """Sample ids that have both an image and a mask; a DatasetError naming the strays if any."""
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask or no_image:
        parts = [f"{len(images)} images but {len(masks)} masks in {where}"]
        if no_mask:
            parts.append("no mask for " + ", ".join(images[s] for s in no_mask[:10]))
        if no_image:
            parts.append("no image for " + ", ".join(masks[s] for s in no_image[:10]))
        raise DatasetError("count mismatch: " + "; ".join(parts))
    return sorted(images)


def raw_dataset(
    rows: list[dict],
    classes: list[str],
    label_map: np.ndarray | None,
    colors: Sequence[Sequence[int]] | None = None,
) -> DatasetInfo:
    """A DatasetInfo of files as found (``rows`` without sizes; sizes read from headers)."""
    seen: dict[str, str] = {}
    for r in rows:
        if r["sample_id"] in seen:
            raise DatasetError(
                f"{r['image_uri']} and {seen[r['sample_id']]} have the same "
                f"sample id {r['sample_id']!r}; ids must be unique across splits"
            )
        seen[r["sample_id"]] = r["image_uri"]
    with ThreadPoolExecutor(max_workers=io_workers()) as pool:
        sizes = list(pool.map(lambda r: _size_or_error(r["image_uri"]), rows))
    errors = [s for s in sizes if isinstance(s, str)]
    if errors:
        raise DatasetError(
            f"{len(errors)} images are unreadable (fix or remove them):\n  "
            + "\n  ".join(errors[:10])
        )
    full = [{**r, "height": h, "width": w} for r, (h, w) in zip(rows, sizes)]
    return DatasetInfo(make_manifest(full), list(classes), IGNORE_INDEX, label_map, colors)


# -- Source stamps: what a prepared cache was made from (s4al_ray/data/prepare.py)


def parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def _dir_stamps(folder: str) -> dict[str, str]:
    """``{file name: "size@mtime_ns"}`` of the files directly in ``folder``: one listing (the
    same numbers as :func:`s4al_ray.storage.stamp`, without a request per file)."""
    fs, path = storage.filesystem(folder)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return {}
    infos = fs.get_file_info(pafs.FileSelector(path))
    return {i.base_name: f"{i.size}@{i.mtime_ns}" for i in infos if i.type == pafs.FileType.File}


def snapshot(folders: Sequence[str]) -> dict[str, dict[str, str]]:
    """The stamps of every file in ``folders`` (not recursive), folder by folder."""
    with ThreadPoolExecutor(max_workers=io_workers()) as pool:
        return dict(zip(folders, pool.map(_dir_stamps, folders)))


def snapshot_stamp(snap: dict[str, dict[str, str]], uri: str) -> str | None:
    """``uri``'s stamp in ``snap``; None when it was not there."""
    return snap.get(parent(uri), {}).get(uri.rstrip("/").rsplit("/", 1)[-1])
