"""Shared fixtures: one local Ray for the whole session (each start costs seconds)."""

from __future__ import annotations

import os
import sys

import pytest

# benchmarks/local_cluster.py: the multi-node cluster and the process helpers tests share with it.
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
)
from local_cluster import pids_matching  # noqa: E402,F401  (re-exported to the tests)

os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """Started after the moto S3 server so Ray workers inherit its endpoint and test credentials
    (a real cluster's nodes get theirs from their own AWS configuration)."""
    import ray

    from s4al_ray.config import load_config
    from s4al_ray.runtime import connect

    cfg = load_config(None, ["ray.num_cpus=2", "ray.object_store_mb=256"])
    # s4al_trial: what sweep trials reserve instead of a CPU (tests/test_sweep.py)
    connect(cfg, custom_resources={"s4al_trial": 2})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def smoke_data_root(tmp_path_factory) -> str:
    """The smoke config's synthetic dataset, generated once per session."""
    from s4al_ray.data.synthetic import generate_synthetic_dataset

    root = str(tmp_path_factory.mktemp("data") / "synthetic_smoke")
    generate_synthetic_dataset(root, num_train=24, num_val=6, height=64, width=80, seed=0)
    return root


# -- A local S3 (moto server) for tests that read or write s3:// URIs. Loopback only.


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, proc, timeout_s: float = 30.0) -> None:
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with status {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is serving
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{proc.args[0]} did not answer at {url} within {timeout_s}s")


def _stop(proc, timeout_s: float) -> None:
    """Stop a server a fixture started: this PID only, killed if it does not exit in time."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def s3_server():
    """Endpoint URL of a moto S3 server; S4AL_S3_ENDPOINT and dummy credentials are set.

    storage._s3_filesystem is cached per (endpoint, region), so setting the environment before
    the first s3:// access is enough for every later one in this session.
    """
    import subprocess
    import sys

    pytest.importorskip("moto.server", reason="needs moto[server]")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "S4AL_S3_ENDPOINT": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {name: os.environ.get(name) for name in env}
    try:
        _wait_until_up(url, proc)
        os.environ.update(env)
        yield url
    finally:
        _stop(proc, timeout_s=10)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# -- A real Label Studio server (its own venv: .ci/run builds .label-studio-venv). Loopback only.

LABEL_STUDIO_BIN = os.environ.get(
    "S4AL_LABEL_STUDIO",
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        ".label-studio-venv",
        "bin",
        "label-studio",
    ),
)


@pytest.fixture(scope="session")
def label_studio_server(tmp_path_factory, smoke_data_root):
    """(URL, access token) of a Label Studio server with its own sqlite data dir, serving the
    smoke dataset's images as local files. Label Studio pins Django and friends that Ray's venv
    does not want, so it lives in a venv of its own (S4AL_LABEL_STUDIO names another binary)."""
    import secrets
    import subprocess

    if not os.access(LABEL_STUDIO_BIN, os.X_OK):
        pytest.skip(
            f"no Label Studio at {LABEL_STUDIO_BIN}: build it with python3 -m venv "
            '.label-studio-venv && .label-studio-venv/bin/pip install "label-studio==1.23.2" '
            "(as .ci/run does)"
        )
    data_dir = str(tmp_path_factory.mktemp("label_studio"))
    port, token = _free_port(), secrets.token_hex(20)
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": data_dir,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": smoke_data_root,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",  # --user-token's kind of token
        "DJANGO_DB": "sqlite",
    }
    log = open(os.path.join(data_dir, "server.log"), "wb")
    proc = subprocess.Popen(
        [LABEL_STUDIO_BIN, "start", "--host", "127.0.0.1", "--port", str(port), "--no-browser"]
        + ["--data-dir", data_dir, "--username", "annotator@example.com"]
        + ["--password", secrets.token_hex(8), "--user-token", token],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(f"{url}/health", proc, timeout_s=180)  # migrations on first start
        yield url, token
    finally:
        _stop(proc, timeout_s=20)
        log.close()


def upload_tree(endpoint: str, local_dir: str, bucket: str, prefix: str = "") -> str:
    """Create ``bucket`` (if needed), upload every file under ``local_dir`` below ``prefix``,
    and return the ``s3://bucket/prefix`` URI of the copy."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)
    for folder, _, files in os.walk(local_dir):
        for name in files:
            path = os.path.join(folder, name)
            key = "/".join(p for p in (prefix, os.path.relpath(path, local_dir)) if p)
            client.upload_file(path, bucket, key.replace(os.sep, "/"))
    return f"s3://{bucket}/{prefix}".rstrip("/")


@pytest.fixture
def s3_upload(s3_server):
    """``s3_upload(local_dir, bucket, prefix="") -> "s3://bucket/prefix"`` on the moto server."""
    return lambda local_dir, bucket, prefix="": upload_tree(s3_server, local_dir, bucket, prefix)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA; without it they are skipped, not failed."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def kill_driver_when(cmd: list[str], cwd: str, marker, timeout: float = 300) -> None:
    """Run the driver ``cmd`` and SIGKILL it as soon as ``marker`` (a path) exists, as a lost
    driver machine would be; fails if it finished first."""
    import signal
    import subprocess
    import tempfile
    import time

    with tempfile.TemporaryFile() as output:
        driver = subprocess.Popen(cmd, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while not os.path.exists(marker) and driver.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        if driver.poll() is not None:
            output.seek(0)
            tail = output.read().decode(errors="replace")[-3000:]
            raise AssertionError(f"the driver finished before it could be killed:\n{tail}")
    driver.send_signal(signal.SIGKILL)
    driver.wait()
