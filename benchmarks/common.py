"""Shared helpers for the performance benchmarks (``benchmarks/*.py``).

Every figure is a median over repeats, printed next to the 1-minute load average that was read
when it was taken: this machine's 2 cores are shared with other jobs, so a figure without its load
means little. Ray and plain-PyTorch variants of the same work are interleaved within one run of a
script, so both sides see the same load.

The jobs handed to Ray (the teacher's ``TeacherJob``, the student's ``StudentJob``) are built on
``configs/default.yaml`` by the functions the round loop builds them with (``s4al_ray.jobs``), and
the stages run are the round loop's own (``Experiment.teach``, ``Experiment.acquire``): never
re-written here. A benchmark varies a job only with ``dataclasses.replace``.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from s4al_ray.acquisition import Candidates
    from s4al_ray.jobs import TeacherSummary
    from s4al_ray.pool.state import PoolState
    from s4al_ray.student import StudentJob
    from s4al_ray.teacher import TeacherJob

# OpenMP's wait policy is left as the product leaves it (runtime.WORKER_ENV_DEFAULTS: OpenMP's
# own); OMP_WAIT_POLICY=PASSIVE in the environment runs a benchmark and its Ray workers with it.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "default.yaml")


def module_at(rev: str, path: str, name: str):
    """The module ``path`` of the project as of git revision ``rev`` (for "before" variants
    measured side by side with today's code; needs the repository's history)."""
    import subprocess
    import types

    source = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, f"{rev[:7]}:{path}", "exec"), module.__dict__)
    return module


def load1() -> float:
    """The 1-minute load average (2 cores here: above ~2 the figures were taken under load)."""
    return os.getloadavg()[0]


def machine() -> dict:
    import platform

    import torch

    return {
        "cpus": os.cpu_count(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "RAY_worker_niceness": os.environ.get("RAY_worker_niceness"),
        "load_at_start": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


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
        return {
            "median": self.median,
            "values": self.values,
            "loads": self.loads,
            "load_median": self.load,
            "extra": self.extra,
        }


def timed(fn: Callable[[], object]) -> tuple[float, object, float]:
    """(seconds, result, load at the end) of one call."""
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out, load1()


def interleave(
    variants: dict[str, Callable[[], dict | None]], repeat: int, log: Callable[[str], None] = print
) -> dict[str, Samples]:
    """Run every variant once per repeat, in a rotating order (so no variant always runs right
    after the same neighbour). A variant returns extra figures (dict) or None; its wall time is
    recorded as the sample value."""
    samples = {name: Samples(name) for name in variants}
    names = list(variants)
    for rep in range(repeat):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            seconds, extra, load = timed(variants[name])
            samples[name].add(seconds, load, **(extra or {}))
            extra_text = "".join(
                f" {k}={v:.3g}" for k, v in (extra or {}).items() if isinstance(v, (int, float))
            )
            log(
                f"  rep {rep + 1}/{repeat}  {name:<28s} {seconds:8.2f}s  load {load:5.2f}"
                f"{extra_text}"
            )
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
    parser.add_argument(
        "--background-load",
        type=int,
        default=0,
        metavar="N",
        help="run N busy-looping processes (nice 0) meanwhile: a reproducible "
        "stand-in for other jobs sharing the cores",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="config overrides on configs/default.yaml",
    )
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


# -- The project's own objects, built the way the round loop builds them


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

    torch.manual_seed(exp.cfg.seed)
    model = model_from_config(exp.cfg.model, exp.data.num_classes, "none")
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict()}, buffer)
    uri = exp.layout.checkpoint(round_index)
    storage.write_bytes(uri, buffer.getvalue())
    return uri


def current_state(exp, round_index: int) -> PoolState:
    """The pool state round ``round_index`` starts from, as the pool actor holds it now."""
    from s4al_ray.pool.actor import pool_snapshot

    return pool_snapshot(exp.pool).before(round_index)


@dataclass(frozen=True)
class TeacherCall:
    """One teacher pass of the round loop: its inputs and where it wrote, and its result."""

    job: TeacherJob
    rows: list[dict]
    output_uri: str
    candidates: Candidates  # the blocks' acquisition candidates (what selection ranks)
    summary: TeacherSummary


def teacher_call(exp, round_index: int, state: PoolState, checkpoint: str) -> TeacherCall:
    """Run the round loop's own teacher stage (``Experiment.teach``) once, and return its inputs
    as built by the public functions ``teach`` builds them with (``jobs.teacher_job``,
    ``jobs.teacher_rows``, ``RunLayout.teacher``, ``runtime.teacher_workers``), on the same
    config, dataset, pool state, round and checkpoint, for the benchmarks to rerun."""
    from s4al_ray.jobs import teacher_job, teacher_rows
    from s4al_ray.runtime import teacher_workers

    job = teacher_job(
        exp.cfg, exp.data, state, round_index, checkpoint, teacher_workers(exp.cfg, exp.cluster())
    )
    rows = teacher_rows(exp.data, state)
    result = exp.teach(round_index, state, checkpoint)
    return TeacherCall(
        job, rows, exp.layout.teacher(round_index), result.candidates, result.summary
    )


def round1_setup(exp, checkpoint: str | None = None) -> dict:
    """What round 1 of the default run trains on: round 0's checkpoint (untrained unless given),
    its teacher pass (``Experiment.teach``) and acquisition (``Experiment.acquire``, committed
    through the pool actor), then ``jobs.student_job`` for round 1 on the committed state, as
    ``Experiment.run_round`` builds it. Returns {"job": the round-1 ``StudentJob``, "teacher":
    round 0's ``TeacherCall``, "checkpoint": round 0's checkpoint}."""
    from s4al_ray.jobs import student_job

    checkpoint = checkpoint or save_untrained_checkpoint(exp, 0)
    state0 = current_state(exp, 0)
    teacher = teacher_call(exp, 0, state0, checkpoint)
    exp.acquire(0, state0, teacher.candidates)
    job = student_job(exp.cfg, exp.data, current_state(exp, 1), exp.layout, 1, teacher.summary)
    return {"job": job, "teacher": teacher, "checkpoint": checkpoint}


def one_epoch(job: StudentJob, steps: int, **train) -> StudentJob:
    """``job`` trained for one epoch of ``steps`` steps, with other ``TrainConfig`` fields
    replaced too (``cpus_per_worker`` is also the threads each worker runs on)."""
    return replace(job, train=replace(job.train, epochs=1, steps_per_epoch=steps, **train))


def plain_epoch(job: StudentJob, model_out: list | None = None) -> dict:
    """``student.train_loop``'s work for one epoch, rank 0 of 1, in this process without Ray:
    the same functions, seeds, batches and augmentation. Returns its parts' seconds (and appends
    the trained model to ``model_out`` when given)."""
    import json

    import torch

    from s4al_ray.data.train_inputs import read_train_inputs
    from s4al_ray.evaluate import evaluate_items
    from s4al_ray.mean_teacher import make_ema_teacher
    from s4al_ray.student import (
        METRICS_FILE,
        MODEL_FILE,
        build_datasets,
        epoch_streams,
        init_model,
        make_optimizer,
        train_epoch,
    )

    t0 = time.perf_counter()
    train = job.train
    torch.set_num_threads(train.cpus_per_worker)
    torch.manual_seed(job.seed)
    device = torch.device("cpu")
    model = init_model(job)
    optimizer = make_optimizer(model, train)
    sets = build_datasets(job)
    epoch = 0
    model.train()
    streams = epoch_streams(job, sets, 0, epoch, device)
    t1 = time.perf_counter()
    ema = make_ema_teacher(model, train, sets.pool is not None)
    losses, _ = train_epoch(model, optimizer, job, epoch, streams, device, ema)
    t2 = time.perf_counter()
    evaluate_items(model, read_train_inputs(job.inputs_uri, "val"), job.num_classes, device)
    t3 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="s4al-bench-ckpt-") as directory:
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
            os.path.join(directory, MODEL_FILE),
        )
        with open(os.path.join(directory, METRICS_FILE), "w") as handle:
            json.dump(losses, handle)
        t4 = time.perf_counter()
    if model_out is not None:
        model_out.append(model)
    return {
        "setup_s": t1 - t0,
        "loop_s": t2 - t1,
        "eval_s": t3 - t2,
        "ckpt_s": t4 - t3,
        "step_s": (t2 - t1) / train.steps_per_epoch,
    }


def train_step_seconds(job: StudentJob, steps: int, threads: int, warmup: int = 3) -> list[float]:
    """Seconds of each of ``steps`` ``student.train_step`` calls after ``warmup`` untimed ones, in
    this process, on ``threads`` threads: the round's batches and seeds, from a fresh model."""
    import torch

    from s4al_ray.losses.joint import reco_weight_at
    from s4al_ray.student import (
        build_datasets,
        epoch_streams,
        init_model,
        make_optimizer,
        run_step,
        train_step,
    )

    torch.set_num_threads(threads)
    torch.manual_seed(job.seed)
    device = torch.device("cpu")
    model = init_model(job)
    optimizer = make_optimizer(model, job.train)
    sets = build_datasets(job)
    model.train()
    generator, labeled, pool = epoch_streams(job, sets, 0, 0, device)
    out = []
    for step in range(warmup + steps):
        weight = reco_weight_at(job.train, job.reco, run_step(job, 0, step))
        batch_u = next(pool) if pool else None
        started = time.perf_counter()
        train_step(
            model, optimizer, job, next(labeled), batch_u, device, generator, None, False, weight
        )
        out.append(time.perf_counter() - started)
    return out[warmup:]


def train_round0(exp, steps: int) -> str:
    """A briefly trained round-0 student (plain loop, round 0's own ``StudentJob`` cut to one
    epoch of ``steps``), saved where the round loop publishes it: for figures that depend on the
    weights (pseudo-label sizes)."""
    import io

    import torch

    from s4al_ray import storage
    from s4al_ray.jobs import student_job

    job = student_job(exp.cfg, exp.data, current_state(exp, 0), exp.layout, 0, None)
    models: list = []
    plain_epoch(one_epoch(job, steps), models)
    buffer = io.BytesIO()
    torch.save({"model": models[0].state_dict()}, buffer)
    uri = exp.layout.checkpoint(0)
    storage.write_bytes(uri, buffer.getvalue())
    return uri


def header(title: str, quick: bool) -> None:
    info = machine()
    print(f"# {title}{'  (--quick)' if quick else ''}")
    print(
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')!r}, "
        f"RAY_worker_niceness={os.environ.get('RAY_worker_niceness')!r}"
    )
    print(
        f"machine: {info['cpus']} CPUs, torch {info['torch']} (default "
        f"{info['torch_threads_default']} threads), CUDA: {info['cuda']}, load average at start "
        f"{info['load_at_start']}"
    )
    sys.stdout.flush()
