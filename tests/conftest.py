"""Shared fixtures: one local Ray for the whole session (each start costs seconds)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from s4al_ray.config import load_config
    from s4al_ray.runtime import connect

    cfg = load_config(None, ["ray.num_cpus=2", "ray.object_store_mb=256"])
    connect(cfg)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def smoke_data_root(tmp_path_factory) -> str:
    """The smoke config's synthetic dataset, generated once per session."""
    from s4al_ray.data.synthetic import generate_synthetic_dataset

    root = str(tmp_path_factory.mktemp("data") / "synthetic_smoke")
    generate_synthetic_dataset(root, num_train=24, num_val=6, height=64, width=80, seed=0)
    return root
