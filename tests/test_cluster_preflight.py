"""The cluster preflight: paths other nodes cannot open are refused before any work."""

from __future__ import annotations

import pytest

from s4al_ray.config import ConfigError, load_config
from s4al_ray.runtime import ClusterResources, check_cluster_paths

ON_S3 = ["data.root=s3://bucket/data", "data.cache_dir=s3://bucket/cache", "storage=s3://bucket/runs"]


def _cfg(*overrides: str):
    return load_config("configs/default.yaml", list(overrides))


@pytest.mark.parametrize(
    "key, value",
    [("data.root", "data/cityscapes"), ("data.cache_dir", "/tmp/cache"), ("storage", "runs")],
)
def test_a_node_local_path_is_refused_on_a_multi_node_cluster(key, value):
    overrides = [o for o in ON_S3 if not o.startswith(f"{key}=")] + [f"{key}={value}"]
    with pytest.raises(ConfigError) as err:
        check_cluster_paths(_cfg(*overrides), ClusterResources(cpus=8, gpus=0, nodes=3))
    message = str(err.value)
    assert message.startswith(f"{key}: {value!r}")
    assert "3 nodes" in message
    assert f"{key}=s3://" in message and "storage_shared=true" in message


def test_an_autoscaling_cluster_of_one_node_counts_as_many():
    cfg = _cfg(*ON_S3[:2], "storage=runs", "ray.autoscale=true")
    with pytest.raises(ConfigError, match="storage: 'runs'.*autoscaling"):
        check_cluster_paths(cfg, ClusterResources(cpus=2, gpus=0, nodes=1))


def test_s3_paths_shared_mounts_and_single_nodes_pass():
    many = ClusterResources(cpus=8, gpus=0, nodes=3)
    check_cluster_paths(_cfg(*ON_S3), many)
    check_cluster_paths(_cfg("storage_shared=true"), many)  # NFS/EFS mounted on every node
    check_cluster_paths(_cfg(), ClusterResources(cpus=2, gpus=0, nodes=1))  # a laptop
