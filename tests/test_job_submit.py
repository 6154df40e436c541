"""`ray job submit` against a local Ray cluster started by the test, with data and results on a
local moto S3 server: the cluster path users take, on loopback only."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import boto3
import pytest
from conftest import pids_matching

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _kill_cluster(marker: str) -> None:
    """Stop only this test's cluster (``ray stop`` would also stop the session's Ray)."""
    for pid in pids_matching(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def local_cluster(ray_session, s3_server):
    """A head node on 127.0.0.1 with its own ports and temp dir; yields the dashboard URL."""
    temp = tempfile.mkdtemp(prefix="s4rt", dir="/tmp")  # short: Ray's socket paths are long
    gcs, dash, client, agent, agent_grpc, metrics, renv, node, objm = _free_ports(9)
    # Jobs run with the cluster's environment: its `python` must be this interpreter.
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": path}
    command = [
        RAY,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--num-cpus=2",
        f"--temp-dir={temp}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={renv}",
        f"--node-manager-port={node}",
        f"--object-manager-port={objm}",
        "--min-worker-port=21000",
        "--max-worker-port=21999",
        "--disable-usage-stats",
    ]
    started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _kill_cluster(temp)
        time.sleep(1)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_smoke_experiment_to_s3(
    local_cluster, s3_server, s3_upload, smoke_data_root
):
    address, env = local_cluster
    data_uri = s3_upload(smoke_data_root, "job-data", "synthetic_smoke")
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="job-runs")
    submit = [
        RAY,
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        REPO,
        "--",
        "python",
        "run.py",
        "--config",
        "configs/smoke.yaml",
        "name=job",
        "storage=s3://job-runs/experiments",
        f"data.root={data_uri}",
        "data.kind=folder",
    ]
    result = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "succeeded" in output
    assert "Done in" in output  # the experiment's own closing line, streamed from the job
    listed = client.list_objects_v2(Bucket="job-runs", Prefix="experiments/job/")["Contents"]
    keys = {o["Key"] for o in listed}
    for expected in ("config.yaml", "rounds.csv", "pool/head.json", "checkpoints/round_001.pt"):
        assert f"experiments/job/{expected}" in keys
    body = client.get_object(Bucket="job-runs", Key="experiments/job/rounds.csv")["Body"].read()
    assert body.decode().splitlines()[0].startswith("round,")
    assert len(body.decode().splitlines()) == 3  # header + 2 rounds
    assert "testing" not in output  # the test credentials never appear in the job's output
