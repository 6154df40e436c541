"""Tracking against a real MLflow tracking server (the `mlflow` package, sqlite backend, on
127.0.0.1, a free port; stopped by its PID): the smoke experiment with tracking=[tensorboard,
mlflow], its driver killed in round 1 and resumed, read back through MLflow's own client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import _free_port, kill_driver_when

from s4al_ray.config import ConfigError, load_config
from s4al_ray.experiment import Experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    pytest.importorskip("mlflow", reason="needs mlflow (pip install mlflow)")
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    command = [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{root}/mlflow.db"]
    command += ["--artifacts-destination", str(root / "artifacts")]
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, open(root / "server.log").read()
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its uvicorn workers, by PID
        proc.wait()


def _overrides(tmp_path, smoke_data_root, url: str) -> list[str]:
    return [
        f"storage={tmp_path}",
        f"data.root={smoke_data_root}",
        "name=tracked",
        "tracking=[tensorboard,mlflow]",
        f"tracking_uri={url}",
        "train.epochs=3",
        "train.steps_per_epoch=3",
    ]


def test_killed_and_resumed_run_is_one_mlflow_run_with_each_round_once(
    ray_session, mlflow_server, smoke_data_root, tmp_path
):
    from mlflow import MlflowClient

    overrides = _overrides(tmp_path, smoke_data_root, mlflow_server)
    address = ray_session.get_runtime_context().gcs_address
    cmd = [sys.executable, os.path.join(REPO, "run.py"), "--config", "configs/smoke.yaml"]
    round1 = tmp_path / "tracked" / "train" / "tracked-round001" / "epoch_000"
    kill_driver_when([*cmd, "--address", address, *overrides], REPO, round1)
    cfg = load_config("configs/smoke.yaml", overrides)
    records = Experiment(cfg, log=lambda line: None).run()

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("s4al-ray")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the resume continued the killed driver's run
    run = runs[0]
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "3"
    assert run.data.params["acquisition.round_budget"] == str(cfg.acquisition.round_budget)
    miou = client.get_metric_history(run.info.run_id, "val/miou")
    assert [(m.step, m.value) for m in miou] == [
        (r["round"], pytest.approx(r["val/miou"])) for r in records
    ]
    labeled = client.get_metric_history(run.info.run_id, "pool/labeled_frac")
    assert [m.step for m in labeled] == [0, 1]
    epochs = {m.step for m in client.get_metric_history(run.info.run_id, "epoch/loss_total")}
    # 2 rounds x 3 epochs. Round 1's first epoch (step 3) is checkpointed before its report
    # reaches the driver: killed in between, its metrics are lost to tracking (the resumed run
    # restarts after that checkpoint); the round records are complete either way.
    assert {0, 1, 2, 4, 5} <= epochs <= set(range(6))
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "rounds.csv" in artefacts and "report" in artefacts
    csv_path = client.download_artifacts(run.info.run_id, "rounds.csv", str(tmp_path / "dl"))
    assert len(open(csv_path).read().splitlines()) == 3  # header + both rounds
    assert (tmp_path / "tracked" / "tensorboard").is_dir()


def test_mlflow_without_the_package_is_refused_before_any_work(monkeypatch, tmp_path):
    import importlib.util

    from s4al_ray.tracking import check_trackers

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    cfg = load_config(None, ["tracking=[tensorboard,mlflow]"])
    with pytest.raises(ConfigError, match=r"tracking: mlflow needs the mlflow package"):
        check_trackers(cfg)
