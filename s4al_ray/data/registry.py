"""``load_dataset(cfg)``: the one entry point that turns a data config into a manifest."""

from __future__ import annotations

from s4al_ray.config import DataConfig
from s4al_ray.data.folder import DatasetError, load_folder_dataset
from s4al_ray.data.manifest import DatasetInfo


def load_dataset(data: DataConfig, seed: int) -> DatasetInfo:
    if data.kind == "synthetic":
        from s4al_ray.data.synthetic import generate_synthetic_dataset

        syn = data.synthetic
        generate_synthetic_dataset(data.root, num_train=syn.num_train, num_val=syn.num_val,
                                   height=syn.height, width=syn.width, seed=syn.seed)
        return load_folder_dataset(data.root, seed)
    if data.kind == "folder":
        return load_folder_dataset(data.root, seed)
    raise DatasetError(f"data.kind: unknown dataset kind {data.kind!r}")
