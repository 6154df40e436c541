"""`ray job submit` to a multi-node Ray cluster started by the test (a head and worker nodes, each
a raylet of its own, as `ray start` makes them on cloud machines), with the dataset, the prepared
cache, checkpoints and results on a local moto S3 server only: the cluster path users take, on
loopback. Nodes are added and killed while experiments run.

Why `ray start` per node (``benchmarks/local_cluster.py``) rather than
``ray.cluster_utils.Cluster`` or the autoscaler's fake provider: it is exactly what the cluster
launcher and KubeRay run on each machine (own raylet, object store, ports and agents; the head
scheduling no work with ``--num-cpus=0``), the job goes through the real job server, and a node
is lost the way a machine is lost (its raylet killed).
"""

from __future__ import annotations

import json
import os
import time

import boto3
import pytest
from conftest import upload_tree
from local_cluster import LocalCluster  # benchmarks/ (conftest puts it on the path)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The smoke images as a folder dataset resized through the prepared cache (which must be on S3,
# where every node reads it).
PREPARED = ["data.kind=folder", "data.resize_height=48", "data.resize_width=64"]


@pytest.fixture(scope="module")
def cluster(ray_session, s3_server):
    """The head and two worker nodes; tests may add nodes (and kill the ones they added)."""
    made = LocalCluster()
    try:
        made.add_worker()
        made.add_worker()
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def on_s3(cluster, s3_server, smoke_data_root):
    """The smoke experiment's overrides with every location on S3, and an S3 client."""
    data_uri = upload_tree(s3_server, smoke_data_root, "job-data", "synthetic_smoke")
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="job-runs")
    overrides = [
        "--config",
        "configs/smoke.yaml",
        "storage=s3://job-runs/experiments",
        f"data.root={data_uri}",
        *PREPARED,
        "data.cache_dir=s3://job-runs/cache",
    ]
    return overrides, client


def _keys(client, prefix: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="job-runs", Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def _record(client, name: str, r: int) -> dict:
    key = f"experiments/{name}/rounds/round_{r:03d}.json"
    return json.loads(client.get_object(Bucket="job-runs", Key=key)["Body"].read())


def _ledger(name: str, smoke_data_root: str, cache: str) -> list:
    """The run's pool ledger on S3: (round, selection, pixels) per acquisition."""
    from s4al_ray.config import load_config
    from s4al_ray.data.registry import load_dataset
    from s4al_ray.layout import RunLayout
    from s4al_ray.pool.actor import load_state
    from s4al_ray.pool.index import ImageSizes

    cfg = load_config(
        os.path.join(REPO, "configs", "smoke.yaml"),
        [f"data.root={smoke_data_root}", *PREPARED, f"data.cache_dir={cache}"],
    )
    sizes = ImageSizes.of_rows(load_dataset(cfg.data, cfg.seed).rows("train"))
    state = load_state(RunLayout.of("s3://job-runs/experiments", name), sizes)
    return [(e["round"], dict(e["selection"]), e["pixels"]) for e in state.ledger]


@pytest.fixture(scope="module")
def reference_run(cluster, on_s3) -> str:
    """The smoke experiment submitted once and left to finish: the job's output."""
    overrides, _ = on_s3
    return cluster.submit([*overrides, "name=job"])[1]


def test_submitted_experiment_runs_on_worker_nodes_with_everything_on_s3(
    cluster, on_s3, reference_run
):
    _, client = on_s3
    output = reference_run
    assert "succeeded" in output
    assert "Done in" in output  # the experiment's own closing line, streamed from the job
    keys = _keys(client, "experiments/job/")
    for expected in ("config.yaml", "rounds.csv", "pool/head.json", "checkpoints/round_001.pt"):
        assert f"experiments/job/{expected}" in keys
    assert any(k.endswith("/prepared.json") for k in _keys(client, "cache/")), "no cache on S3"
    body = client.get_object(Bucket="job-runs", Key="experiments/job/rounds.csv")["Body"].read()
    assert len(body.decode().splitlines()) == 3  # header + 2 rounds
    # Where the work ran: every stage on worker nodes (the head has no CPU to give).
    workers = {n["node_id"] for n in cluster.nodes() if not n["is_head_node"]}
    first, last = _record(client, "job", 0), _record(client, "job", 1)
    assert set(first["train/nodes"]) <= workers and set(last["train/nodes"]) <= workers
    assert first["teacher/nodes"] and set(first["teacher/nodes"]) <= workers
    assert sum(first["teacher/nodes"].values()) == 18  # every pool image, once
    assert "testing" not in output  # the test credentials never appear in the job's output


def _wait_for_key(cluster, client, job_id: str, prefix: str, part: str) -> None:
    deadline = time.time() + 300
    while not any(part in key for key in _keys(client, prefix)):
        assert cluster.status(job_id) in ("PENDING", "RUNNING"), cluster.cli("job", "logs", job_id)
        assert time.time() < deadline, f"no {part} under {prefix} after 300 s"
        time.sleep(0.5)


def test_job_stopped_mid_round_resumes_to_the_same_pool(
    cluster, on_s3, reference_run, smoke_data_root, tmp_path
):
    overrides, client = on_s3
    name = "stopped"
    job_id, _ = cluster.submit([*overrides, f"name={name}"], wait=False)
    # Stopped while round 0 trains: after its first epoch checkpoint reached S3.
    _wait_for_key(cluster, client, job_id, f"experiments/{name}/train/", "epoch_000")
    cluster.cli("job", "stop", job_id)
    assert cluster.wait_for_end(job_id) == "STOPPED"
    assert f"experiments/{name}/rounds/round_000.json" not in _keys(client, "experiments/")
    _, output = cluster.submit([*overrides, f"name={name}"])
    assert "succeeded" in output
    assert _ledger(name, smoke_data_root, str(tmp_path)) == _ledger(
        "job", smoke_data_root, str(tmp_path)
    )
    assert _ledger(name, smoke_data_root, str(tmp_path))  # round 0 acquired regions


def test_elastic_student_survives_a_lost_node_and_grows_into_a_new_one(cluster, on_s3):
    """Train workers 1..3: round 0 starts on the three worker nodes there are; one is lost
    mid-round (the round completes on the others, from its last epoch checkpoint), another
    joins, and round 1's student runs on it."""
    overrides, client = on_s3
    name = "elastic"
    added_id = cluster.add_worker()
    elastic = ["train.max_workers=3", "train.max_failures=4", "train.epochs=4"]
    job_id, _ = cluster.submit([*overrides, f"name={name}", *elastic], wait=False)
    _wait_for_key(cluster, client, job_id, f"experiments/{name}/train/", "epoch_000/metrics")
    epoch_key = f"experiments/{name}/train/{name}-round000/epoch_000/metrics.json"
    started = json.loads(client.get_object(Bucket="job-runs", Key=epoch_key)["Body"].read())
    # The group starts with what Ray can place (3 nodes; 2 when a CPU is still held by the
    # previous test's job, and then the node just added may be the one left out): the node
    # lost is one the group trains on, the added one when it does.
    assert len(set(started["train/nodes"])) >= 2
    training = [n for n in started["train/nodes"] if n in cluster.workers]
    lost_id = added_id if added_id in training else training[0]
    cluster.kill_worker(lost_id)
    joined_id = cluster.add_worker()
    assert cluster.wait_for_end(job_id) == "SUCCEEDED", cluster.cli("job", "logs", job_id)
    first, last = _record(client, name, 0), _record(client, name, 1)
    assert lost_id not in first["train/nodes"], "the node was lost after round 0 trained"
    assert len(set(first["train/nodes"])) == len(first["train/nodes"]) >= 2
    assert lost_id not in last["train/nodes"] and joined_id in last["train/nodes"]
    assert len(set(last["train/nodes"])) == len(last["train/nodes"]) >= 2
    assert lost_id not in first["teacher/nodes"]


def test_a_large_working_dir_is_named_before_upload(cluster, tmp_path):
    """A dataset inside the submitted directory: the project's .gitignore keeps data/ (where
    configs/cityscapes.yaml and camvid.yaml look) out of the package; anything else large gets
    Ray's warning before the upload, naming .gitignore/.rayignore and excludes (and the job
    server refuses a package over 512 MiB). The warning threshold (Ray's setting, 256 MiB by
    default) is lowered to 2 MiB so that a few MB stand for gigabytes."""
    import shutil
    import subprocess

    from local_cluster import RAY

    work = tmp_path / "project"
    work.mkdir()
    shutil.copy(os.path.join(REPO, ".gitignore"), work / ".gitignore")
    (work / "run.py").write_text("print('packaged without the dataset')\n")
    (work / "data" / "cityscapes").mkdir(parents=True)
    (work / "data" / "cityscapes" / "frames.bin").write_bytes(os.urandom(3_000_000))
    env = {**cluster.env, "RAY_PACKAGE_SIZE_WARNING_MIB": "2"}

    def submit():
        command = [RAY, "job", "submit", "--address", cluster.dashboard, "--working-dir"]
        command += [str(work), "--", "python", "run.py"]
        done = subprocess.run(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one stream: the order of the messages is kept
            text=True,
            timeout=300,
        )
        return done.returncode, done.stdout

    code, output = submit()
    assert code == 0 and "packaged without the dataset" in output, output[-3000:]
    assert "approaching the maximum upload size" not in output
    (work / "frames_copy.bin").write_bytes(os.urandom(3_000_000))  # not ignored
    code, output = submit()
    assert "approaching the maximum upload size" in output  # from the zip, before it is sent
    assert "'.gitignore'" in output and "'excludes' option" in output
