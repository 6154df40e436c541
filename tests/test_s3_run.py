"""A whole experiment with data and results on S3 (a local moto server), and storage errors."""

from __future__ import annotations

import json

import boto3
import pytest

from s4al_ray import storage
from s4al_ray.config import load_config
from s4al_ray.experiment import Experiment


def _client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def test_experiment_on_s3(ray_session, s3_server, s3_upload, smoke_data_root):
    data_uri = s3_upload(smoke_data_root, "s4al-data", "synthetic_smoke")
    _client(s3_server).create_bucket(Bucket="s4al-runs")
    cfg = load_config(
        "configs/smoke.yaml",
        [f"data.root={data_uri}", "storage=s3://s4al-runs/exp", "name=s3run", "data.kind=folder"],
    )
    records = Experiment(cfg, log=lambda line: None).run()
    assert records[1]["pool/labeled_frac"] > records[0]["pool/labeled_frac"]
    keys = {
        o["Key"]
        for o in _client(s3_server).list_objects_v2(Bucket="s4al-runs", Prefix="exp/s3run/")[
            "Contents"
        ]
    }
    for expected in (
        "exp/s3run/config.yaml",
        "exp/s3run/rounds.csv",
        "exp/s3run/pool/head.json",
        "exp/s3run/checkpoints/round_000.pt",
        "exp/s3run/rounds/round_001.json",
    ):
        assert expected in keys
    assert any(
        k.startswith("exp/s3run/teacher/round_000/") and k.endswith(".parquet") for k in keys
    )
    assert any(k.startswith("exp/s3run/train/") for k in keys)
    head = json.loads(storage.read_text("s3://s4al-runs/exp/s3run/pool/head.json"))
    assert sum(r["pixels"] for r in head["rounds"]) == records[0]["pool/acquired_pixels"] > 0


def test_missing_bucket_fails_before_training(s3_server):
    with pytest.raises(storage.StorageError) as err:
        storage.check_writable("s3://no-such-bucket/prefix")
    message = str(err.value)
    assert "no-such-bucket" in message and s3_server in message


def test_unreachable_endpoint_names_it(monkeypatch):
    monkeypatch.setenv(storage.ENDPOINT_ENV, "http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(storage.StorageError, match=r"127\.0\.0\.1:9"):
        storage.check_writable("s3://bucket/prefix")


def test_sync_up_and_down_skips_what_is_there(s3_server, smoke_data_root, tmp_path):
    from s4al_ray.transfer import sync

    _client(s3_server).create_bucket(Bucket="sync-bucket")
    lines: list[str] = []
    copied = sync(smoke_data_root, "s3://sync-bucket/data", log=lines.append)
    assert copied > 30 and "files to copy" in lines[0] and lines[-1].startswith("[sync]")
    assert sync(smoke_data_root, "s3://sync-bucket/data", log=lines.append) == 0  # resumable
    back = tmp_path / "back"
    assert sync("s3://sync-bucket/data", str(back), log=lines.append) == copied
    original = open(f"{smoke_data_root}/classes.yaml", "rb").read()
    assert (back / "classes.yaml").read_bytes() == original
    with pytest.raises(ValueError, match="between a local directory and an s3://"):
        sync(str(tmp_path), str(back))
