"""Ray Tune sweeps: validation before Ray, targets, and tiny real sweeps of the smoke config.

The real sweeps (2 trials x 2 rounds) run on the session's 2-CPU Ray: one is started by a
subprocess driver, killed (SIGKILL) after the first trial and during the second, and resumed
in-process; another runs ASHA so that a trial is stopped early.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import struct
import subprocess
import sys
import time

import pytest
import yaml

from s4al_ray.config import ConfigError
from s4al_ray.sweep import Spec, load_sweep, run_sweep, sweep_command
from s4al_ray.sweep_report import curve_auc, miou_at_budget, target_value

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "smoke.yaml")


def write_sweep(path, storage: str, data_root: str, **fields) -> str:
    spec = {
        "name": "tiny",
        "base": SMOKE,
        "storage": storage,
        "overrides": {"data.root": data_root, "loop.rounds": 2},
        "search_space": {"acquisition.round_budget": {"grid": [0.03, 0.05]}},
        "metric": "auc",
        "max_concurrent_trials": 1,
        **fields,
    }
    path.write_text(yaml.safe_dump(spec))
    return str(path)


# -- No Ray


def test_unknown_key_fails_before_anything_starts(tmp_path):
    storage = tmp_path / "sweeps"
    path = write_sweep(
        tmp_path / "bad.yaml",
        str(storage),
        "unused",
        search_space={"train.lrr": {"grid": [0.1, 0.01]}},
    )
    with pytest.raises(ConfigError, match=r"'train.lrr'.*did you mean 'train.lr'"):
        load_sweep(path)
    assert sweep_command(path, [], None) == 2
    assert not storage.exists()  # no Tune directory, no sweep directory


@pytest.mark.parametrize(
    "space, message",
    [
        ({"train.lr": {"grd": [0.1]}}, "did you mean 'grid'"),
        ({"train.epochs": {"uniform": [1, 3]}}, "use randint"),
        ({"acquisition.round_budget": {"grid": [0.01, 0.9]}}, "exceeds acquisition.total_budget"),
        ({"train": {"grid": [1]}}, "is a config section"),
        ({"name": {"grid": ["a"]}}, "not searchable"),
        ({"train.lr": 0.1}, "constants go under overrides"),
    ],
)
def test_bad_search_spaces_name_the_problem(tmp_path, space, message):
    path = write_sweep(tmp_path / "bad.yaml", str(tmp_path), "unused", search_space=space)
    with pytest.raises(ConfigError, match=message):
        load_sweep(path)


def test_spaces_and_concurrency_needs(tmp_path):
    path = write_sweep(
        tmp_path / "s.yaml",
        str(tmp_path),
        "unused",
        num_samples=3,
        search_space={
            "acquisition": {"function": {"grid": ["entropy", "random"]}},
            "train.reco_weight": {"choice": [0.0, 0.1]},
            "acquisition.region_size": {"randint": [8, 24]},
            "train.cpus_per_worker": {"grid": [1, 2]},
        },
    )
    sweep = load_sweep(path, ["overrides.train.epochs=1"])
    assert sweep.num_trials == 2 * 2 * 3
    assert sweep.need_cpus == 2  # the largest trainer in the space
    assert sweep.base.train.epochs == 1
    assert Spec.parse("k", {"randint": [8, 24]}).domain().upper == 25  # inclusive upper bound


@pytest.mark.parametrize("name, trials", [("sweep_smoke.yaml", 2), ("sweep_synthetic.yaml", 8)])
def test_shipped_sweeps_load(name, trials):
    sweep = load_sweep(os.path.join(REPO, "configs", name))
    assert sweep.num_trials == trials


def test_targets():
    points = [(0.1, 0.2), (0.2, 0.4), (0.4, 0.4)]
    assert curve_auc(points) == pytest.approx((0.1 * 0.3 + 0.2 * 0.4) / 0.3)
    assert curve_auc([(0.1, 0.3)]) == 0.3
    assert miou_at_budget(points, 0.25) == 0.4
    assert miou_at_budget(points, 0.05) == 0.0
    assert target_value("final_miou", points, 0.0) == 0.4


def test_trials_fall_back_to_memory_without_the_custom_resource(monkeypatch):
    import ray

    from s4al_ray import sweep

    lines: list[str] = []
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    resources = sweep._trial_resources(lines.append)
    assert resources["CPU"] == 0 and resources["memory"] > 0
    assert "--resources" in lines[0]


# -- Real sweeps


def _tune_status(sweep_dir: str) -> dict[str, str]:
    """Trial id -> status in the experiment state Tune last saved to storage."""
    states = sorted(glob.glob(os.path.join(sweep_dir, "experiment_state-*.json")))
    if not states:
        return {}
    try:
        with open(states[-1]) as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, OSError):
        return {}  # being written
    trials = [json.loads(entry[0]) for entry in data["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def _result_lines(trial_dir: str) -> list[dict]:
    path = os.path.join(trial_dir, "result.json")
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _tune_trial_dirs(sweep_dir: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(sweep_dir, "*_000*")) if os.path.isdir(p))


def _wait(condition, timeout_s: float, proc=None, log_path: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc is not None and proc.poll() is not None:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if not condition():
        output = open(log_path).read()[-4000:] if log_path else ""
        pytest.fail(f"condition not met within {timeout_s}s\n{output}")


def _mtimes(folder: str) -> dict[str, float]:
    return {
        p: os.path.getmtime(p)
        for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
        if os.path.isfile(p)
    }


@pytest.fixture(scope="module")
def resumed_sweep(ray_session, smoke_data_root, tmp_path_factory):
    """Start a sweep in a subprocess driver, SIGKILL it once the first trial has finished and the
    second has reported round 0, then rerun the same sweep file here."""
    tmp = tmp_path_factory.mktemp("sweep")
    path = write_sweep(tmp / "tiny.yaml", str(tmp / "sweeps"), smoke_data_root)
    sweep_dir = str(tmp / "sweeps" / "tiny")
    log_path = str(tmp / "driver.log")
    address = ray_session.get_runtime_context().gcs_address
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "run.py", "sweep", "--config", path, "--address", address],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def first_done_second_started() -> bool:
            status = _tune_status(sweep_dir)
            dirs = _tune_trial_dirs(sweep_dir)
            return (
                len(dirs) == 2
                and bool(status)
                and status[min(status)] == "TERMINATED"
                and len(_result_lines(dirs[1])) >= 1
            )

        _wait(first_done_second_started, 480, proc, log_path)
    finally:
        proc.kill()  # this driver only; the cluster cleans up its trials
        proc.wait()
    first, second = (
        os.path.join(sweep_dir, "trials", f"tiny-{os.path.basename(d)[:11]}")
        for d in _tune_trial_dirs(sweep_dir)
    )
    before = {"first": _mtimes(first), "second": _mtimes(os.path.join(second, "rounds"))}
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):  # SweepProgress prints
        outcome = run_sweep(load_sweep(path))
    return {
        "outcome": outcome,
        "dir": sweep_dir,
        "first": first,
        "second": second,
        "before": before,
        "output": buffer.getvalue(),
        "driver_log": open(log_path).read(),
    }


def test_resume_does_not_rerun_the_finished_trial(resumed_sweep):
    r = resumed_sweep
    first_id = os.path.basename(r["first"])[len("tiny-") :]
    second_id = os.path.basename(r["second"])[len("tiny-") :]
    assert f"{first_id} (round_budget=0.03) started" in r["driver_log"]
    assert f"{first_id} (round_budget=0.03) started" not in r["output"], r["output"]
    assert f"{first_id} round" not in r["output"]  # never restarted
    assert f"{second_id} round 0" not in r["output"]  # round 0 not reported again
    assert f"{second_id} round 1/1" in r["output"]
    assert _mtimes(r["first"]) == r["before"]["first"]  # nothing of it rewritten
    after = _mtimes(os.path.join(r["second"], "rounds"))
    round0 = os.path.join(r["second"], "rounds", "round_000.json")
    assert after[round0] == r["before"]["second"][round0]  # the second resumed at round 1
    assert sorted(os.listdir(os.path.dirname(r["first"]))) == sorted(
        [os.path.basename(r["first"]), os.path.basename(r["second"])]
    )
    assert set(_tune_status(r["dir"]).values()) == {"TERMINATED"}


def test_the_sweep_driver_prints_no_raylet_start_up_warnings(resumed_sweep):
    """Raylet warnings about worker start-up concurrency were printed on every sweep (nothing
    for the user to act on); the local Ray now allows as many starts as workers it keeps."""
    assert "[sweep]" in resumed_sweep["driver_log"]
    for text in (resumed_sweep["driver_log"], resumed_sweep["output"]):
        assert "maximum expected startup concurrency" not in text


def test_one_result_per_round_per_trial(resumed_sweep):
    dirs = _tune_trial_dirs(resumed_sweep["dir"])
    assert len(dirs) == 2
    for trial_dir in dirs:
        assert [line["round"] for line in _result_lines(trial_dir)] == [0, 1]
        line = _result_lines(trial_dir)[-1]
        assert {"val/miou", "pool/labeled_frac", "target", "time/train_s", "val/iou/sky"} <= set(
            line
        )
    for result in resumed_sweep["outcome"].results:
        assert list(result.metrics_dataframe["round"]) == [0, 1]


def test_report_and_curves(resumed_sweep):
    outcome = resumed_sweep["outcome"]
    with open(outcome.report_csv) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == ["done", "done"]
    assert sorted(float(row["acquisition.round_budget"]) for row in rows) == [0.03, 0.05]
    targets = [float(row["target"]) for row in rows]
    assert targets == sorted(targets, reverse=True)
    assert all(float(row["auc"]) == pytest.approx(float(row["target"])) for row in rows)
    assert "round_budget" in resumed_sweep["output"] and "report.csv" in resumed_sweep["output"]
    with open(outcome.curves_png, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def _read_events(path: str) -> list:
    """TensorBoard event records (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    with open(path, "rb") as handle:
        data = handle.read()
    events, pos = [], 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[pos + 12 : pos + 12 + length])
        events.append(event)
        pos += 12 + length + 4
    return events


def test_tensorboard_events_per_trial(resumed_sweep):
    for trial_dir in _tune_trial_dirs(resumed_sweep["dir"]):
        files = glob.glob(os.path.join(trial_dir, "events.out.tfevents.*"))
        assert files  # a restored trial gets a second file; TensorBoard merges them
        values = [(e.step, v) for f in files for e in _read_events(f) for v in e.summary.value]
        miou_steps = sorted(step for step, v in values if v.tag == "val/miou")
        assert miou_steps == [0, 1]
        assert any(v.tag.startswith("_hparams_") for _, v in values)


def test_asha_stops_a_trial_and_releases_its_resources(ray_session, smoke_data_root, tmp_path):
    """The second trial labels 50% at round 0, over the 30% budget: target 0, below the first
    trial's, so ASHA stops it at its first rung."""
    path = write_sweep(
        tmp_path / "asha.yaml",
        str(tmp_path),
        smoke_data_root,
        name="asha",
        metric="miou_at_budget",
        budget=0.3,
        scheduler="asha",
        grace_period=1,
        search_space={"data.initial_labeled_frac": {"grid": [0.25, 0.5]}},
    )
    with contextlib.redirect_stdout(io.StringIO()) as output:
        outcome = run_sweep(load_sweep(path))
    statuses = [row.status for row in sorted(outcome.rows, key=lambda r: r.trial_id)]
    assert statuses == ["done", "stopped after 1/2 rounds"], output.getvalue()
    assert "stopped early after 1 round(s)" in output.getvalue()

    def released() -> bool:
        total, free = ray_session.cluster_resources(), ray_session.available_resources()
        groups = ray_session.util.placement_group_table().values()
        return all(free.get(k, 0) == total[k] for k in ("CPU", "s4al_trial")) and all(
            g["state"] == "REMOVED" for g in groups
        )

    _wait(released, 60)
