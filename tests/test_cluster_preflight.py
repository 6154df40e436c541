"""The cluster preflight: paths other nodes cannot open are refused before any work."""

from __future__ import annotations

import pytest

from s4al_ray.config import ConfigError, load_config
from s4al_ray.runtime import ClusterResources, check_cluster_paths

ON_S3 = [
    "data.root=s3://bucket/data",
    "data.cache_dir=s3://bucket/cache",
    "storage=s3://bucket/runs",
]


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


DOCUMENTED = ["README.md", "cluster/README.md", "cluster/aws.yaml", "cluster/kuberay.yaml"]


def _submit_commands() -> list[tuple[str, list[str]]]:
    """Every documented cluster command: the ``python run.py ...`` part of each line with
    ``ray job submit``, and the KubeRay job's entrypoint."""
    import os
    import shlex

    import yaml

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = []
    for name in DOCUMENTED:
        text = open(os.path.join(root, name)).read()
        lines = [line for line in text.splitlines() if "ray job submit" in line]
        if name.endswith("kuberay.yaml"):
            for doc in yaml.safe_load_all(text):
                entrypoint = (doc or {}).get("spec", {}).get("entrypoint")
                if entrypoint:
                    lines.append(entrypoint)
        for line in lines:
            if "python run.py" not in line:
                continue
            command = line[line.index("python run.py") :].split("#")[0].strip().strip("`")
            found.append((name, shlex.split(command)[2:]))
    return found


def test_documented_cluster_commands_are_found():
    names = {name for name, _ in _submit_commands()}
    assert {"README.md", "cluster/README.md", "cluster/kuberay.yaml"} <= names


@pytest.mark.parametrize("where, argv", _submit_commands())
def test_every_documented_submit_command_passes_the_cluster_preflight(where, argv):
    """Each documented command parses into a config whose data, cache and run directory every
    node of a multi-node cluster can reach."""
    from s4al_ray.cli import _parser, resolve_config

    command = argv.pop(0) if argv and argv[0] in ("sweep", "prepare", "annotate") else "run"
    args = _parser(command).parse_intermixed_args(argv)
    if command == "sweep":  # a sweep file's base config with the command's overrides
        from s4al_ray.sweep_space import load_sweep

        cfg = load_sweep(resolve_config(args.config), args.overrides).base
    else:
        cfg = load_config(resolve_config(args.config), args.overrides)
    check_cluster_paths(cfg, ClusterResources(cpus=64, gpus=8, nodes=3))


# -- A node that cannot reach S3: its first stage fails naming the node and what it lacks


def test_a_node_that_cannot_reach_the_bucket_is_named_with_the_settings_to_fix(monkeypatch):
    from conftest import _free_port

    from s4al_ray import storage

    endpoint = f"http://127.0.0.1:{_free_port()}"  # nothing listens: the node's route is gone
    monkeypatch.setenv(storage.ENDPOINT_ENV, endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSECRETVALUE")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with pytest.raises(storage.StorageError) as err:
        storage.check_node_access("s3://fleet-frames/train/a.png")
    message = str(err.value)
    assert "cannot read s3://fleet-frames/train/a.png (bucket 'fleet-frames'" in message
    assert f"endpoint {endpoint}" in message and "s3_endpoint=" in message
    assert "has AWS_ACCESS_KEY_ID" in message and "IRSA" in message
    assert "AKIDSECRETVALUE" not in message  # names of credential sources, never their values


def test_a_reachable_bucket_is_checked_once_per_process(s3_server, s3_upload, tmp_path):
    from s4al_ray import storage

    (tmp_path / "f.txt").write_text("x")
    uri = s3_upload(str(tmp_path), "node-check")
    storage.check_node_access(f"{uri}/f.txt")
    assert (storage.s3_endpoint(), "node-check") in storage._REACHED_BUCKETS
    storage.check_node_access("runs/local/path")  # local paths: nothing to check


def _storage_error_raiser():
    """A function that raises as a node without S3 access does; nested, so Ray ships it by value
    (workers cannot import this test module)."""

    def fail(_=None):
        from s4al_ray.storage import StorageError

        raise StorageError("Ray node abc cannot read s3://b/k: no credentials")

    return fail


def test_a_train_workers_storage_error_reaches_the_driver_as_itself(ray_session, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from s4al_ray.runtime import worker_storage_errors
    from s4al_ray.storage import StorageError

    trainer = TorchTrainer(
        _storage_error_raiser(),
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(tmp_path), name="no-s3"),
    )
    with pytest.raises(StorageError) as err, worker_storage_errors():
        trainer.fit()
    assert type(err.value) is StorageError
    assert str(err.value) == "Ray node abc cannot read s3://b/k: no credentials"


def test_a_ray_data_tasks_storage_error_reaches_the_driver_as_itself(ray_session):
    import ray

    from s4al_ray.runtime import worker_storage_errors
    from s4al_ray.storage import StorageError

    with pytest.raises(StorageError) as err, worker_storage_errors():
        ray.data.range(4).map_batches(_storage_error_raiser()).take_all()
    assert str(err.value) == "Ray node abc cannot read s3://b/k: no credentials"
