"""Fault injection with real processes: killed workers, drivers and actors, damaged files."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest
from conftest import kill_driver_when, pids_matching

from s4al_ray.config import load_config
from s4al_ray.experiment import Experiment
from s4al_ray.layout import RunLayout
from s4al_ray.pool.actor import PoolStateHolder, get_pool_actor, load_state
from s4al_ray.pool.index import ImageSizes
from s4al_ray.pool.state import PoolState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(region_size: int = 16) -> PoolState:
    return PoolState(
        region_size=region_size,
        num_classes=2,
        sizes={f"i{k}": [32, 32] for k in range(4)},
        labeled=["i0"],
    )


def _masks(tmp_path) -> dict[str, str]:
    import numpy as np
    from PIL import Image

    uris = {}
    for k in range(4):
        path = tmp_path / f"i{k}.png"
        Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(path)
        uris[f"i{k}"] = str(path)
    return uris


def test_truncated_state_file_falls_back_to_previous_version(tmp_path, capsys):
    masks = _masks(tmp_path)
    holder = PoolStateHolder(RunLayout(str(tmp_path)), _state(), masks)
    holder.commit(0, {"i1": [0]})
    holder.commit(1, {"i2": [1]})
    path = RunLayout(str(tmp_path)).pool_head
    text = open(path).read()
    with open(path, "w") as handle:  # a crash mid-write, as a non-atomic copy would leave it
        handle.write(text[: len(text) // 2])
    reloaded = PoolStateHolder(RunLayout(str(tmp_path)), _state(), masks)
    assert "unreadable" in capsys.readouterr().out
    assert reloaded.state.committed_rounds == [0]
    assert reloaded.commit(1, {"i2": [1]})["pixels"] == 256  # the lost commit is redone
    reopened = PoolStateHolder(RunLayout(str(tmp_path)), _state(), masks)
    assert reopened.state.committed_rounds == [0, 1]


def test_killed_pool_actor_reloads_its_state(ray_session, tmp_path):
    ray = ray_session
    masks = _masks(tmp_path)
    actor = get_pool_actor("fault-pool", RunLayout(str(tmp_path)), _state(), masks)
    ray.get(actor.commit.remote(0, {"i1": [0, 1], "i2": [3]}))
    ray.kill(actor, no_restart=False)  # like a node loss: Ray restarts it, __init__ reloads
    deadline = time.time() + 60
    while True:
        try:
            state = ray.get(actor.snapshot.remote(), timeout=30)
            break
        except ray.exceptions.RayActorError:
            assert time.time() < deadline, "pool actor did not come back"
            time.sleep(0.5)
    assert state.acquired == {"i1": [0, 1], "i2": [3]}
    assert state.acquired_pixels == 3 * 256
    with pytest.raises(ray.exceptions.RayTaskError, match="already acquired"):
        ray.get(actor.commit.remote(1, {"i1": [1]}))
    entry = ray.get(actor.commit.remote(1, {"i1": [2]}))
    assert entry["pixels"] == 256
    ray.kill(actor, no_restart=True)


def _smoke(storage: str, data_root: str, name: str, *extra: str):
    return load_config(
        os.path.join(REPO, "configs", "smoke.yaml"),
        [f"storage={storage}", f"data.root={data_root}", f"name={name}", *extra],
    )


def _train_worker_pids() -> list[int]:
    return pids_matching("RayTrainWorker")


def test_killed_training_worker_round_still_completes(ray_session, smoke_data_root, tmp_path):
    cfg = _smoke(
        str(tmp_path),
        smoke_data_root,
        "workerkill",
        "loop.rounds=1",
        "train.epochs=3",
        "train.steps_per_epoch=3",
        "train.max_failures=2",
    )
    first_epoch = tmp_path / "workerkill" / "train" / "workerkill-round000" / "epoch_000"
    killed: list[int] = []

    def kill_after_first_checkpoint() -> None:
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            if first_epoch.exists():
                for pid in _train_worker_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    records = Experiment(cfg, log=lambda line: None).run()
    killer.join(timeout=5)
    assert killed, "no training worker was found to kill"
    assert records[0]["round"] == 0 and 0.0 <= records[0]["val/miou"] <= 1.0
    assert (tmp_path / "workerkill" / "checkpoints" / "round_000.pt").exists()


def test_driver_killed_in_round_1_resumes_to_the_same_pool(ray_session, smoke_data_root, tmp_path):
    extra = ("train.epochs=3", "train.steps_per_epoch=3")
    reference = Experiment(
        _smoke(str(tmp_path), smoke_data_root, "reference", *extra), log=lambda line: None
    )
    reference.run()
    name = "interrupted"
    address = ray_session.get_runtime_context().gcs_address
    cmd = [
        sys.executable,
        os.path.join(REPO, "run.py"),
        "--config",
        os.path.join(REPO, "configs", "smoke.yaml"),
        "--address",
        address,
        f"storage={tmp_path}",
        f"data.root={smoke_data_root}",
        f"name={name}",
        *extra,
    ]
    round1_checkpoint = tmp_path / name / "train" / f"{name}-round001" / "epoch_000"
    kill_driver_when(cmd, REPO, round1_checkpoint)
    assert not (tmp_path / name / "rounds" / "round_001.json").exists()
    lines: list[str] = []
    Experiment(_smoke(str(tmp_path), smoke_data_root, name, *extra), log=lines.append).run()
    assert any(line.startswith("[round 0] already done") for line in lines)
    assert not any(line.startswith("[round 1] already done") for line in lines)

    sizes = ImageSizes.of_rows(reference.data.rows("train"))

    def ledger(run: str) -> list:
        state = load_state(RunLayout(str(tmp_path / run)), sizes)
        return [(e["round"], dict(e["selection"]), e["pixels"]) for e in state.ledger]

    assert ledger(name) == ledger("reference")
