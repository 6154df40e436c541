"""Fixed costs per stage (what a round pays whatever its size), and the default run end to end.

Stages, each timed on its own and repeated (median): Ray start and stop; the experiment's
preflight (dataset check) and prepare (pool actor); Ray Train start-up (a fit whose loop does
nothing but report, with and without a checkpoint, 1 and 2 workers, and at Ray Train's own 2 s
controller poll against the project's ``student_trainer.TRAIN_POLL_S``); Ray Data dataset
creation and a trivial pass; the teacher actor pool start (a trivial callable class, and the real
``run_teacher`` on a handful of images); checkpoint write / publish / read; the student's
dataset build on a worker. Then ``python run.py`` with the default config as a subprocess: wall
time, and peak memory summed over its whole process tree (Ray's GCS, raylet and workers are its
descendants) by a sampler reading /proc every 0.5 s, plus /usr/bin/time's largest single process.

    .venv/bin/python benchmarks/fixed_costs.py             # ~6 min (run.py is ~4 of them)
    .venv/bin/python benchmarks/fixed_costs.py --quick     # ~1.5 min: stages once, no run.py
    .venv/bin/python benchmarks/fixed_costs.py --skip-run  # stages only
    .venv/bin/python benchmarks/fixed_costs.py --run-only  # python run.py only
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

# -- Memory of a process tree


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(name))
        except (OSError, IndexError, ValueError):
            continue
    return children


def _tree(root: int) -> list[int]:
    children, out, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in kB; PSS shares shared pages (torch libraries, the object store) fairly."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


class TreeSampler(threading.Thread):
    """Peak summed RSS and PSS of a process and all its descendants, sampled periodically."""

    def __init__(self, pid: int, period_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.period_s = pid, period_s
        self.peak_rss_kb = self.peak_pss_kb = self.peak_procs = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            pids = _tree(self.pid)
            mem = [_memory_kb(p) for p in pids]
            self.peak_rss_kb = max(self.peak_rss_kb, sum(m[0] for m in mem))
            self.peak_pss_kb = max(self.peak_pss_kb, sum(m[1] for m in mem))
            self.peak_procs = max(self.peak_procs, len(pids))
            self.stop_event.wait(self.period_s)


def run_default(overrides: list[str]) -> dict:
    """``python run.py`` (the default config) in a fresh storage directory, measured."""
    storage = common.scratch_dir("s4al-bench-run-")
    cmd = [sys.executable, os.path.join(common.ROOT, "run.py"), f"storage={storage}", *overrides]
    timer = shutil.which("time") and os.path.exists("/usr/bin/time")
    if timer:
        cmd = ["/usr/bin/time", "-v", *cmd]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    load_before = common.load1()
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=common.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sampler = TreeSampler(proc.pid)
    sampler.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - started
    sampler.stop_event.set()
    sampler.join()
    out = {
        "cmd": " ".join(cmd),
        "returncode": proc.returncode,
        "wall_s": wall,
        "load_before": load_before,
        "load_after": common.load1(),
        "peak_tree_rss_mb": sampler.peak_rss_kb / 1024,
        "peak_tree_pss_mb": sampler.peak_pss_kb / 1024,
        "peak_processes": sampler.peak_procs,
    }
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", output)
    if match:
        out["time_v_max_single_rss_mb"] = int(match.group(1)) / 1024
    from s4al_ray.layout import RunLayout

    rounds_csv = RunLayout.of(storage, "default").rounds_csv  # the default config's name
    if os.path.exists(rounds_csv):
        with open(rounds_csv) as handle:
            out["rounds"] = [
                {
                    k: row[k]
                    for k in (
                        "round",
                        "time/train_s",
                        "time/teacher_s",
                        "time/acquire_s",
                        "time/round_s",
                        "val/miou",
                    )
                }
                for row in csv.DictReader(handle)
            ]
    log_path = os.path.join(tempfile.gettempdir(), "s4al-bench-run-py.log")
    with open(log_path, "w") as handle:
        handle.write(output)
    out["output_log"] = log_path
    if proc.returncode != 0:
        out["tail"] = output[-2000:]
    shutil.rmtree(storage, ignore_errors=True)
    return out


# -- Stages


def _noop_loop(config: dict) -> None:
    import ray.train

    if not config.get("checkpoint_model"):
        ray.train.report({"done": 1})
        return
    import json

    import torch
    from ray.train import Checkpoint

    from s4al_ray.model import model_from_config

    model = model_from_config(config["model"], config["num_classes"], "none")  # a ModelConfig
    # Staged as the student's epoch report stages it: the synchronous upload has copied it when
    # report returns.
    with tempfile.TemporaryDirectory(prefix="s4al-bench-ckpt-") as directory:
        torch.save({"model": model.state_dict()}, os.path.join(directory, "model.pt"))
        with open(os.path.join(directory, "metrics.json"), "w") as handle:
            json.dump({}, handle)
        checkpoint = (
            Checkpoint.from_directory(directory)
            if ray.train.get_context().get_world_rank() == 0
            else None
        )
        ray.train.report({"done": 1}, checkpoint=checkpoint)


def train_startup(
    storage_dir: str,
    name: str,
    workers: int,
    cpus: int,
    loop_config: dict,
    poll_s: str | None = None,
) -> float:
    """A fit of the no-op loop, polled every ``poll_s`` (the project's ``TRAIN_POLL_S`` unless
    given; Ray's own default is 2 s)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from s4al_ray.student_trainer import TRAIN_POLL_ENV, TRAIN_POLL_S

    os.environ[TRAIN_POLL_ENV] = poll_s or TRAIN_POLL_S  # read per fit by Ray Train's driver side

    trainer = TorchTrainer(
        _noop_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=False, resources_per_worker={"CPU": cpus}
        ),
        run_config=RunConfig(name=name, storage_path=storage_dir),
    )
    started = time.perf_counter()
    with common.quiet_stdout():
        trainer.fit()
    return time.perf_counter() - started


class NoopPredictor:
    """An actor-pool callable class with nothing to load: the pool's own start-up cost."""

    def __call__(self, batch: dict) -> dict:
        return {"sample_id": batch["sample_id"]}


def data_pass(rows: list[dict], out_dir: str, actors: int | None, batch_size: int) -> float:
    import ray

    items = [{"sample_id": r["sample_id"], "image_uri": r["image_uri"]} for r in rows]
    started = time.perf_counter()
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 64)))
    if actors:
        ds = ds.map_batches(
            NoopPredictor,
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1,
        )
    else:
        ds = ds.map_batches(
            lambda b: {"sample_id": b["sample_id"]}, batch_size=batch_size, batch_format="numpy"
        )
    shutil.rmtree(out_dir, ignore_errors=True)
    ds.write_parquet(out_dir)
    return time.perf_counter() - started


def checkpoint_io(exp, uri_dir: str) -> dict:
    """What a round does with checkpoints outside Ray Train: the worker's save (model +
    optimizer), the driver's publish copy, the teacher's load."""
    import torch

    from s4al_ray import storage
    from s4al_ray.model import model_from_config
    from s4al_ray.model.weights import load_checkpoint

    model = model_from_config(exp.cfg.model, exp.data.num_classes, "none")
    optimizer = torch.optim.SGD(model.parameter_groups(), lr=0.01, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # momentum buffers exist, as in a real checkpoint
    directory = common.scratch_dir("s4al-bench-ckpt-")
    path = os.path.join(directory, "model.pt")
    t0 = time.perf_counter()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 0}, path)
    t1 = time.perf_counter()
    published = storage.join(uri_dir, "round_999.pt")
    storage.write_bytes(published, storage.read_bytes(path))
    t2 = time.perf_counter()
    load_checkpoint(model, published)
    t3 = time.perf_counter()
    return {
        "save_s": t1 - t0,
        "publish_s": t2 - t1,
        "load_s": t3 - t2,
        "size_mb": os.path.getsize(path) / 2**20,
    }


def report_run(overrides: list[str]) -> dict:
    print("\npython run.py (default config) ...", flush=True)
    run = run_default(overrides)
    print(
        common.table(
            ["figure", "value"],
            [
                [k, f"{v:.1f}" if isinstance(v, float) else v]
                for k, v in run.items()
                if k not in ("rounds", "tail", "cmd")
            ],
            "Default run (python run.py)",
        )
    )
    if run.get("rounds"):
        print(
            common.table(
                list(run["rounds"][0]),
                [[f"{float(v):.1f}" if v else "-" for v in r.values()] for r in run["rounds"]],
                "Its rounds (from rounds.csv)",
            )
        )
    if run.get("tail"):
        print(run["tail"])
    return run


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--skip-run", action="store_true", help="do not run python run.py")
    parser.add_argument("--run-only", action="store_true", help="only python run.py")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    common.header("Fixed costs per stage", args.quick)
    if args.run_only:
        run = report_run(args.overrides)
        common.write_json(args.json, {"machine": common.machine(), "run_py": run})
        return 0
    import ray

    from s4al_ray.student import build_datasets
    from s4al_ray.teacher import run_teacher

    stages: dict[str, common.Samples] = {}

    def add(name: str, seconds: float, **extra) -> None:
        stages.setdefault(name, common.Samples(name)).add(seconds, **extra)
        print(f"  {name:<44s} {seconds:7.2f}s  load {common.load1():5.2f}", flush=True)

    base = common.scratch_dir("s4al-bench-fixed-")
    # Ray start/stop, preflight and prepare: once per run.
    for i in range(repeat):
        cfg = common.bench_config(args.overrides, storage=base, name=f"fixed-{i}")
        res, seconds = common.connect(cfg)
        add("ray.init (local, 2 CPUs)", seconds)
        t0 = time.perf_counter()
        exp = common.experiment(cfg, res)
        add("preflight + prepare (dataset check, pool actor)", time.perf_counter() - t0)
        if i < repeat - 1:
            t0 = time.perf_counter()
            ray.shutdown()
            add("ray.shutdown", time.perf_counter() - t0)

    cpus = res.cpus
    train_cfg = {"model": exp.cfg.model, "num_classes": exp.data.num_classes}
    for i in range(repeat):
        add(
            f"Ray Train fit, no-op loop, 1 worker x {cpus} CPU",
            train_startup(base, f"noop1-{i}", 1, cpus, train_cfg),
        )
        add(
            f"Ray Train fit, no-op loop, 1 worker x {cpus} CPU, Ray's 2 s poll",
            train_startup(base, f"noop1-poll2-{i}", 1, cpus, train_cfg, poll_s="2"),
        )
        add(
            "Ray Train fit, no-op loop + checkpoint, 1 worker",
            train_startup(base, f"ckpt1-{i}", 1, cpus, {**train_cfg, "checkpoint_model": True}),
        )
        add(
            f"Ray Train fit, no-op loop, 2 workers x {max(1, cpus // 2)} CPU",
            train_startup(base, f"noop2-{i}", 2, max(1, cpus // 2), train_cfg),
        )

    rows = [{**r, "acquired": []} for r in exp.data.rows("train")][:216]
    for _ in range(repeat):
        t0 = time.perf_counter()
        ds = ray.data.from_items(rows, override_num_blocks=13)
        add("ray.data.from_items (lazy)", time.perf_counter() - t0)
        t0 = time.perf_counter()
        ds.materialize()
        add("ray.data.from_items + materialize", time.perf_counter() - t0)
        add(
            "Ray Data trivial task pass + write_parquet",
            data_pass(rows, os.path.join(base, "data_task"), None, 16),
        )
        add(
            f"Ray Data trivial actor pool ({cpus} actors) + write",
            data_pass(rows, os.path.join(base, "data_actor"), cpus, 16),
        )

    checkpoint = common.save_untrained_checkpoint(exp, 0)
    # Round 0's teacher pass and acquisition (the round loop's own stages), then round 1's
    # student job: the pass's pseudo-labels are what the student's dataset build reads.
    setup = common.round1_setup(exp, checkpoint)
    teacher = setup["teacher"]
    workers = teacher.job.num_workers
    tiny = teacher.rows[: 2 * workers]
    for i in range(repeat):
        # A new checkpoint stamp per repeat: the task workers load the model again, as for each
        # round's new checkpoint (their processes and imports are kept, as between rounds).
        tiny_job = replace(
            teacher.job, batch_size=2, checkpoint_stamp=f"{teacher.job.checkpoint_stamp}/{i}"
        )
        add(
            f"run_teacher on {len(tiny)} images ({workers} task workers: model load, write)",
            run_teacher(tiny_job, tiny, exp.layout.scratch("tiny")),
        )
        parts = checkpoint_io(exp, exp.layout.scratch("ckpt"))
        add("checkpoint save (model + optimizer)", parts["save_s"], size_mb=parts["size_mb"])
        add("checkpoint publish copy", parts["publish_s"])
        add("checkpoint load (teacher)", parts["load_s"])

    for _ in range(repeat):
        t0 = time.perf_counter()
        build_datasets(setup["job"])
        add("student build_datasets (reads pseudo-labels)", time.perf_counter() - t0)
    ray.shutdown()

    print(
        common.table(
            ["stage", "median s", "load"],
            [[name, f"{s.median:.2f}", f"{s.load:.1f}"] for name, s in stages.items()],
            f"Fixed costs (median of {repeat})",
        )
    )
    med = {name: s.median for name, s in stages.items()}
    per_round = {
        "Ray Train start-up (fit with checkpoint, no work)": med[
            "Ray Train fit, no-op loop + checkpoint, 1 worker"
        ],
        "teacher pass fixed part (tiny run_teacher)": next(
            v for k, v in med.items() if k.startswith("run_teacher")
        ),
        "checkpoint save + publish + load": med["checkpoint save (model + optimizer)"]
        + med["checkpoint publish copy"]
        + med["checkpoint load (teacher)"],
        "student dataset build": med["student build_datasets (reads pseudo-labels)"],
    }
    total = sum(per_round.values())
    print(
        common.table(
            ["per-round fixed cost", "s"],
            [[k, f"{v:.2f}"] for k, v in per_round.items()] + [["total", f"{total:.1f}"]],
            "Fixed cost per round (target: under 15 s)",
        )
    )
    per_run = (
        med["ray.init (local, 2 CPUs)"] + med["preflight + prepare (dataset check, pool actor)"]
    )
    print(f"per run, once: ray.init + preflight + prepare = {per_run:.1f}s")

    run = None
    if not args.skip_run and not args.quick:
        run = report_run(args.overrides)
    common.write_json(
        args.json,
        {
            "machine": common.machine(),
            "repeat": repeat,
            "stages": {k: v.as_dict() for k, v in stages.items()},
            "per_round": per_round,
            "per_round_total_s": total,
            "per_run_s": per_run,
            "run_py": run,
        },
    )
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
