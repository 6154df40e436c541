"""Tracking against a real MLflow tracking server (the `mlflow` package, sqlite backend, on
127.0.0.1, a free port; stopped by its PID) and W&B offline: the smoke experiment with
tracking=[tensorboard,mlflow,wandb], its driver killed in round 1 and resumed, read back through
MLflow's own client and W&B's run files; a sweep as one parent MLflow run with a child per
trial."""

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
        "tracking=[tensorboard,mlflow,wandb]",
        f"tracking_uri={url}",
        "train.epochs=3",
        "train.steps_per_epoch=3",
    ]


def test_killed_and_resumed_run_is_one_tracked_run_with_each_round_once(
    ray_session, mlflow_server, smoke_data_root, tmp_path, monkeypatch
):
    """All three trackers at once; the driver is killed in round 1 and the run resumed in this
    process. MLflow is read back through its client, TensorBoard through its event reader, W&B
    (offline: no key anywhere) from its run files."""
    from mlflow import MlflowClient

    from s4al_ray.tracking import wandb_mode

    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no entry from `wandb login`
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    assert wandb_mode() == "offline"
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
    _check_wandb_run(tmp_path / "tracked", records, epochs_per_round=3)


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


def test_a_sweep_is_one_parent_mlflow_run_with_a_child_per_trial(
    ray_session, mlflow_server, smoke_data_root, tmp_path
):
    import contextlib
    import io

    import yaml
    from mlflow import MlflowClient

    from s4al_ray.sweep import load_sweep, run_sweep

    spec = {
        "name": "tracked-sweep",
        "base": os.path.join(REPO, "configs", "smoke.yaml"),
        "storage": str(tmp_path / "sweeps"),
        "overrides": {
            "data.root": smoke_data_root,
            "loop.rounds": 1,
            "train.epochs": 1,
            "tracking": ["mlflow"],
            "tracking_uri": mlflow_server,
            "tracking_project": "sweeps",
        },
        "search_space": {"acquisition.round_budget": {"grid": [0.03, 0.05]}},
        "metric": "final_miou",
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    with contextlib.redirect_stdout(io.StringIO()):
        outcome = run_sweep(load_sweep(str(path)))

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("sweeps")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(runs) == 3 and len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == "tracked-sweep" and parent.info.status == "FINISHED"
    assert parent.data.params["search.acquisition.round_budget"] == "grid [0.03, 0.05]"
    assert parent.data.params["sweep.metric"] == "final_miou"
    best = max(row.target for row in outcome.rows)
    assert parent.data.metrics["best/target"] == pytest.approx(best)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "report.csv",
        "curves.png",
    }
    children = [r for r in runs if r is not parent]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.data.params["acquisition.round_budget"] for r in children} == {"0.03", "0.05"}
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.info.run_name.startswith("tracked-sweep-")
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val/miou")] == [0]


# -- W&B's offline run files, read back with W&B's own protobuf schema


def _wandb_records(path: str) -> list:
    """The records of a ``.wandb`` file: W&B's 7-byte header, then LevelDB-log framing (32 KiB
    blocks; each chunk: CRC (4), length (2), type (1: full, 2: first, 3: middle, 4: last))
    around ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):  # the block's zero padding
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _check_wandb_run(run_dir, records: list[dict], epochs_per_round: int) -> None:
    """Both processes' offline files carry the run id kept in tracking.json, the config, each
    round's record once, and a report artefact version per round."""
    import glob
    import json

    run_id = json.load(open(run_dir / "tracking.json"))["wandb_run_id"]
    files = sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(files) == 2 and all(f.endswith(f"run-{run_id}.wandb") for f in files)
    rounds, epochs, config, artefacts = {}, [], {}, []
    for record in (r for f in files for r in _wandb_records(f)):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            assert record.run.run_id == run_id and record.run.display_name == run_dir.name
            assert record.run.project == "s4al-ray"
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "history":
            row = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in record.history.item
            }
            if "round" in row:
                assert row["round"] not in rounds  # each round once over both processes
                rounds[row["round"]] = row
            if "epoch/step" in row:
                epochs.append(row["epoch/step"])
        elif kind == "artifact":
            artefacts.append((record.artifact.name, sorted(record.artifact.aliases)))
    assert config["train.epochs"] == str(epochs_per_round) and config["name"] == run_dir.name
    assert sorted(rounds) == [r["round"] for r in records]
    for r in records:
        assert rounds[r["round"]]["val/miou"] == pytest.approx(r["val/miou"])
        assert rounds[r["round"]]["pool/labeled_frac"] == pytest.approx(r["pool/labeled_frac"])
    # As with MLflow: round 1's first epoch may be lost to the kill, none is logged twice.
    assert len(epochs) == len(set(epochs)) and {0, 1, 2, 4, 5} <= set(epochs)
    name = f"{run_dir.name}-report"
    assert artefacts == [(name, ["latest", "round-0"]), (name, ["latest", "round-1"])]
