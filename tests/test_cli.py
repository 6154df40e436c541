"""Bad input fails with a clear message naming the key or file, before any Ray work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "run.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown config key 'train.epoch'; did you mean 'epochs'?"),
        ("train.epochs=many", "train.epochs: expected int, got str 'many'"),
        (
            "acquisition.round_budget=-0.01",
            "acquisition.round_budget: -0.01 is below the minimum 0.0",
        ),
        ("acquisition.total_budget=1.2", "acquisition.total_budget: 1.2 is above the maximum 1.0"),
        ("acquisition.region_size=4096", "acquisition.region_size (4096) is larger than the image"),
        ("teacher.threshold=1.5", "teacher.threshold: 1.5 is above the maximum 1.0"),
        ("reco.strong_threshold=-1", "reco.strong_threshold: -1.0 is below the minimum 0.0"),
        ("train.num_workers=0", "train.num_workers: 0 is below the minimum 1"),
    ],
)
def test_config_errors_exit_2_before_ray(override, message):
    result = run_cli(override)
    assert result.returncode == 2
    assert message in result.stderr
    assert "[ray]" not in result.stdout


def test_missing_dataset_path_named(tmp_path):
    missing = tmp_path / "nowhere"
    result = run_cli("data.kind=folder", f"data.root={missing}", f"storage={tmp_path}/runs")
    assert result.returncode == 2
    assert str(missing) in result.stderr and "classes.yaml" in result.stderr
    assert "[ray]" not in result.stdout


def test_unreachable_storage_named(tmp_path):
    result = run_cli(
        "storage=s3://some-bucket/runs",
        "s3_endpoint=http://127.0.0.1:9",
        env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"},
    )
    assert result.returncode == 2
    assert "some-bucket" in result.stderr and "127.0.0.1:9" in result.stderr
    assert "[ray]" not in result.stdout


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "run " in result.stdout and "prepare" in result.stdout
