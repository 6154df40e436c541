"""``load_dataset(cfg)``: the one entry point that turns a data config into a manifest."""

from __future__ import annotations

from typing import Callable

from s4al_ray import storage
from s4al_ray.config import DataConfig
from s4al_ray.data.folder import SPLIT_SEED, DatasetError, load_folder_dataset, split_key
from s4al_ray.data.io import storage_problem
from s4al_ray.data.manifest import DatasetInfo
from s4al_ray.data.prepare import CacheSpec, load_prepared, spec_size


def cache_spec(data: DataConfig) -> CacheSpec | None:
    """How ``data`` is prepared into the cache; None when it is read where it is."""
    if data.kind == "cityscapes":
        from s4al_ray.data.cityscapes import cache_spec as cityscapes_spec

        return cityscapes_spec(data)
    if data.kind == "camvid":
        from s4al_ray.data.camvid import cache_spec as camvid_spec

        return camvid_spec(data)
    size = spec_size(data.resize_height, data.resize_width)
    if data.kind == "folder" and size:
        return CacheSpec(
            kind="folder", source=storage.absolute(data.root), size=size, label_map=None
        )
    return None


def _load(data: DataConfig, seed: int, log: Callable[[str], None]) -> DatasetInfo:
    if data.kind == "synthetic":
        from s4al_ray.data.synthetic import generate_synthetic_dataset

        syn = data.synthetic
        generate_synthetic_dataset(
            data.root,
            num_train=syn.num_train,
            num_val=syn.num_val,
            num_test=syn.num_test,
            height=syn.height,
            width=syn.width,
            seed=syn.seed,
            thin_scale=syn.thin_scale,
        )
        return load_folder_dataset(data.root, seed)
    if data.kind == "cityscapes":
        from s4al_ray.data.cityscapes import load_cityscapes

        return load_cityscapes(data, log)
    if data.kind == "camvid":
        from s4al_ray.data.camvid import load_camvid

        return load_camvid(data, log)
    if data.kind == "folder":
        spec = cache_spec(data)
        if spec is not None:  # resized copy in the cache
            return load_prepared(
                spec,
                data.cache_dir,
                lambda: load_folder_dataset(data.root, SPLIT_SEED),
                log,
                scan_key=split_key(data.root, SPLIT_SEED),
            )
        return load_folder_dataset(data.root, SPLIT_SEED)
    raise DatasetError(f"data.kind: unknown dataset kind {data.kind!r}")


def load_dataset(data: DataConfig, seed: int, log: Callable[[str], None] = print) -> DatasetInfo:
    """The dataset ``data`` describes. Every problem, storage that cannot be reached included,
    is a :class:`DatasetError` naming the file or URI and the fix."""
    try:
        info = _load(data, seed, log)
    except OSError as err:  # storage: an endpoint down, a bucket missing, access denied
        on_cache = storage.is_s3(data.cache_dir) and not storage.is_s3(data.root)
        where, what = (
            (data.cache_dir, "the prepared cache") if on_cache else (data.root, "the dataset")
        )
        raise storage_problem(where, err, what) from None
    # Every stage reads mask_uri values as class ids; a label table must have been applied
    # when the cache was written (s4al_ray/data/prepare.py), never left for them to apply.
    if info.label_map is not None:
        raise DatasetError(f"data.kind {data.kind!r}: masks still need a label map")
    return info
