"""Shared helpers for the performance benchmarks (``benchmarks/*.py``).

Every figure is a median over repeats, printed next to the 1-minute load average that was read
when it was taken: this machine's 2 cores are shared with other jobs, so a figure without its load
means little. Ray and plain-PyTorch variants of the same work are interleaved within one run of a
script, so both sides see the same load.

The dicts handed to Ray (the teacher's config, the student's ``loop_config``) are built by the
project's own :class:`~s4al_ray.experiment.Experiment` methods on ``configs/default.yaml``, never
re-written here.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Callable

# torch's OpenMP threads spin while they wait for each other; on cores shared with other jobs a
# spinning thread waits on a descheduled one and 2 threads run several times slower than 1 (see
# BENCHMARKS.md). Passive waiting for both sides (this process and, inherited, Ray's workers);
# run with OMP_WAIT_POLICY= (empty) for OpenMP's own default. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "default.yaml")


def load1() -> float:
    """The 1-minute load average (2 cores here: above ~2 the figures were taken under load)."""
    return os.getloadavg()[0]


def machine() -> dict:
    import platform

    import torch

    return {"cpus": os.cpu_count(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "RAY_worker_niceness": os.environ.get("RAY_worker_niceness"), "load_at_start": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads_default": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


class Samples:
    """Timings of one variant: seconds (or any value) with the load read when each was taken."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.values: list[float] = []
        self.loads: list[float] = []
        self.extra: list[dict] = []

    def add(self, value: float, load: float | None = None, **extra) -> None:
        self.values.append(value)
        self.loads.append(load1() if load is None else load)
        self.extra.append(extra)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def load(self) -> float:
        return statistics.median(self.loads) if self.loads else float("nan")

    def extra_median(self, key: str) -> float:
        vals = [e[key] for e in self.extra if key in e]
        return statistics.median(vals) if vals else float("nan")

    def as_dict(self) -> dict:
        return {"median": self.median, "values": self.values, "loads": self.loads,
                "load_median": self.load, "extra": self.extra}


def timed(fn: Callable[[], object]) -> tuple[float, object, float]:
    """(seconds, result, load at the end) of one call."""
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out, load1()


def interleave(variants: dict[str, Callable[[], dict | None]], repeat: int,
               log: Callable[[str], None] = print) -> dict[str, Samples]:
    """Run every variant once per repeat, in a rotating order (so no variant always runs right
    after the same neighbour). A variant returns extra figures (dict) or None; its wall time is
    recorded as the sample value."""
    samples = {name: Samples(name) for name in variants}
    names = list(variants)
    for rep in range(repeat):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            seconds, extra, load = timed(variants[name])
            samples[name].add(seconds, load, **(extra or {}))
            extra_text = "".join(f" {k}={v:.3g}" for k, v in (extra or {}).items()
                                 if isinstance(v, (int, float)))
            log(f"  rep {rep + 1}/{repeat}  {name:<28s} {seconds:8.2f}s  load {load:5.2f}"
                f"{extra_text}")
    return samples


def table(headers: list[str], rows: list[list], title: str = "") -> str:
    """A Markdown table (pasted into BENCHMARKS.md as printed)."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = [f"\n{title}\n"] if title else []
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | None, payload: dict) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=1, default=str)
    print(f"\nresults written to {path}")


def base_parser(description: str):
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a ~1-minute smoke version")
    parser.add_argument("--repeat", type=int, default=None, help="repeats per variant")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--background-load", type=int, default=0, metavar="N",
                        help="run N busy-looping processes (nice 0) meanwhile: a reproducible "
                             "stand-in for other jobs sharing the cores")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="config overrides on configs/default.yaml")
    return parser


def run(main: Callable[[], int]) -> int:
    """Run a benchmark's ``main`` under ``--background-load N`` when given."""
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--background-load", type=int, default=0)
    known, _ = pre.parse_known_args()
    with background_load(known.background_load):
        return main()


@contextlib.contextmanager
def background_load(count: int):
    """``count`` CPU-bound processes for the duration of the block (0: none)."""
    import subprocess

    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    if procs:
        print(f"background load: {count} busy-looping processes (nice 0)", flush=True)
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------
# The project's own objects, built the way the round loop builds them


@contextlib.contextmanager
def quiet_stdout():
    """Ray Train prints a few lines per fit; keep benchmark output readable."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def scratch_dir(prefix: str = "s4al-bench-") -> str:
    """A temporary directory removed when the benchmark exits: run storage and checkpoints are
    tens to hundreds of MB per benchmark, and nothing reads them afterwards."""
    import atexit
    import shutil

    directory = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def bench_config(overrides: list[str] = (), storage: str | None = None, name: str = "bench"):
    from s4al_ray.config import load_config

    storage = storage or scratch_dir()
    return load_config(DEFAULT_CONFIG, [f"storage={storage}", f"name={name}", *overrides])


def connect(cfg):
    """Start (or reuse) the local Ray the way ``python run.py`` does; returns (resources, s)."""
    from s4al_ray.runtime import connect as ray_connect

    os.chdir(ROOT)  # data.root is relative to the repository
    started = time.perf_counter()
    res = ray_connect(cfg)
    return res, time.perf_counter() - started


def experiment(cfg, resources, log: Callable[[str], None] | None = None):
    """An Experiment on ``cfg`` after ``preflight()`` and ``prepare()`` (pool actor up)."""
    from s4al_ray.experiment import Experiment

    os.chdir(ROOT)
    exp = Experiment(cfg, resources=resources, log=log or (lambda line: None))
    exp.preflight()
    exp.prepare()
    return exp


def save_untrained_checkpoint(exp, round_index: int = 0) -> str:
    """An untrained model in the round checkpoint format (``{"model": state_dict}``) where the
    round loop publishes round ``round_index``'s student: inference and training speed do not
    depend on the weights."""
    import io

    import torch

    from s4al_ray import storage
    from s4al_ray.model import model_from_config
    from s4al_ray.config import to_dict

    torch.manual_seed(exp.cfg.seed)
    model = model_from_config(to_dict(exp.cfg.model), exp.data.num_classes, "none")
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict()}, buffer)
    uri = exp._uri("checkpoints", f"round_{round_index:03d}.pt")
    storage.write_bytes(uri, buffer.getvalue())
    return uri


def capture_teacher_call(exp, round_index: int, checkpoint: str) -> tuple[dict, dict]:
    """Run the round loop's own teacher stage (``Experiment._teach``) once and capture the exact
    arguments it passes to ``run_teacher``. Returns (call kwargs, the round record)."""
    import s4al_ray.experiment as experiment_module

    captured: dict = {}
    real = experiment_module.run_teacher

    def spy(rows, cfg, output_uri, num_actors, batch_size):
        captured.update(rows=rows, cfg=cfg, output_uri=output_uri, num_actors=num_actors,
                        batch_size=batch_size)
        return real(rows, cfg, output_uri, num_actors, batch_size)

    record: dict = {"round": round_index}
    experiment_module.run_teacher = spy
    try:
        state = current_state(exp, round_index)
        exp._teach(round_index, state, checkpoint, record)
    finally:
        experiment_module.run_teacher = real
    return captured, record


def current_state(exp, round_index: int):
    import ray

    from s4al_ray.pool.state import PoolState

    return PoolState.from_json(ray.get(exp.pool.snapshot.remote())).before(round_index)


def round1_setup(exp, checkpoint: str | None = None) -> dict:
    """What round 1 of the default run trains on: round 0's checkpoint (untrained unless given),
    its teacher pass and acquisition, then ``Experiment._loop_config(1, state)``. Returns
    {"loop_config", "teacher_call", "teacher_record", "checkpoint"}."""
    checkpoint = checkpoint or save_untrained_checkpoint(exp, 0)
    call, record = capture_teacher_call(exp, 0, checkpoint)
    exp._acquire(0, current_state(exp, 0), record)
    exp.records = [record]
    loop_config = exp._loop_config(1, current_state(exp, 1))
    return {"loop_config": loop_config, "teacher_call": call, "teacher_record": record,
            "checkpoint": checkpoint}


def plain_epoch(cfg: dict, model_out: list | None = None) -> dict:
    """``student.train_loop``'s work for one epoch, rank 0 of 1, in this process without Ray:
    the same functions, seeds, batches and augmentation. Returns its parts' seconds (and appends
    the trained model to ``model_out`` when given)."""
    import json

    import torch

    from s4al_ray.student import (MODEL_FILE, METRICS_FILE, _build_datasets, _init_model,
                                  epoch_streams, evaluate_items, make_ema_teacher, make_optimizer,
                                  train_epoch)

    t0 = time.perf_counter()
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    device = torch.device("cpu")
    model = _init_model(cfg)
    train = cfg["train"]
    optimizer = make_optimizer(model, train)
    sets = _build_datasets(cfg)
    epoch = 0
    model.train()
    streams = epoch_streams(cfg, sets, 0, epoch, device)
    t1 = time.perf_counter()
    ema = make_ema_teacher(model, train, sets)
    losses, _ = train_epoch(model, optimizer, cfg, epoch, streams, device, ema)
    t2 = time.perf_counter()
    evaluate_items(model, cfg["val_items"], cfg["num_classes"], device)
    t3 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="s4al-bench-ckpt-") as directory:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "epoch": epoch}, os.path.join(directory, MODEL_FILE))
        with open(os.path.join(directory, METRICS_FILE), "w") as handle:
            json.dump(losses, handle)
        t4 = time.perf_counter()
    if model_out is not None:
        model_out.append(model)
    return {"setup_s": t1 - t0, "loop_s": t2 - t1, "eval_s": t3 - t2, "ckpt_s": t4 - t3,
            "step_s": (t2 - t1) / train["steps_per_epoch"]}


def train_round0(exp, steps: int) -> str:
    """A briefly trained round-0 student (plain loop, round 0's own loop_config), saved where the
    round loop publishes it: for figures that depend on the weights (pseudo-label sizes)."""
    import io

    import torch

    from s4al_ray import storage

    cfg = exp._loop_config(0, current_state(exp, 0))
    cfg["train"].update(epochs=1, steps_per_epoch=steps)
    models: list = []
    plain_epoch(cfg, models)
    buffer = io.BytesIO()
    torch.save({"model": models[0].state_dict()}, buffer)
    uri = exp._uri("checkpoints", "round_000.pt")
    storage.write_bytes(uri, buffer.getvalue())
    return uri


def header(title: str, quick: bool) -> None:
    info = machine()
    print(f"# {title}{'  (--quick)' if quick else ''}")
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')!r}, "
          f"RAY_worker_niceness={os.environ.get('RAY_worker_niceness')!r}")
    print(f"machine: {info['cpus']} CPUs, torch {info['torch']} (default {info['torch_threads_default']}"
          f" threads), CUDA: {info['cuda']}, load average at start {info['load_at_start']}")
    sys.stdout.flush()
