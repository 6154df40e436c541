"""Memory format: the student's step and the teacher's forward with channels-last weights (what
``model.build_model`` returns) against the same model in the contiguous (NCHW) format.

Training: the round loop's own round-1 ``StudentJob`` (as ``step_cost.py`` builds it), one
``student.train_step`` per variant on identical batches (two epoch streams of the same seed), the
variants alternating step by step on ``train.cpus_per_worker`` threads. Inference: the teacher's
forward (eval, no grad) on a batch of ``teacher.batch_size`` random images of the dataset's size
on 1 thread (a teacher task's CPU), alternating likewise. Medians; the first steps are warm-up.

    .venv/bin/python benchmarks/memory_format.py            # 30 steps, 30 batches: ~2 min
    .venv/bin/python benchmarks/memory_format.py --quick    # 10 and 12: ~1 min
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

WARMUP = 3


def training_step_s(job, steps: int) -> dict[str, float]:
    """Median seconds of ``student.train_step`` per variant, alternating on the same batches."""
    import torch

    from s4al_ray.student import (
        build_datasets,
        epoch_streams,
        init_model,
        make_optimizer,
        train_step,
    )

    job = common.one_epoch(job, steps)  # an epoch's streams hold ``steps`` batches
    torch.set_num_threads(job.train.cpus_per_worker)
    torch.manual_seed(job.seed)
    device = torch.device("cpu")
    channels_last = init_model(job)
    contiguous = copy.deepcopy(channels_last).to(memory_format=torch.contiguous_format)
    variants = {"contiguous (NCHW)": contiguous, "channels-last": channels_last}
    sets = build_datasets(job)
    state = {}
    for name, model in variants.items():
        model.train()
        state[name] = (
            model,
            make_optimizer(model, job.train),
            epoch_streams(job, sets, 0, 0, device),
        )
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(steps):
        for name, (model, optimizer, (generator, labeled, pool)) in state.items():
            batch_l, batch_u = next(labeled), next(pool) if pool else None
            started = time.perf_counter()
            train_step(model, optimizer, job, batch_l, batch_u, device, generator)
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(v[WARMUP:]) for name, v in seconds.items()}


def inference_s(cfg, num_classes: int, size: tuple[int, int], batches: int) -> dict[str, float]:
    """Median seconds of the teacher's forward on one batch per variant, 1 thread."""
    import torch

    from s4al_ray.model import model_from_config

    torch.set_num_threads(1)
    channels_last = model_from_config(cfg.model, num_classes, "none").eval()
    contiguous = copy.deepcopy(channels_last).to(memory_format=torch.contiguous_format)
    variants = {"contiguous (NCHW)": contiguous, "channels-last": channels_last}
    x = torch.randn(cfg.teacher.batch_size, 3, *size)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for _ in range(batches):
            for name, model in variants.items():
                started = time.perf_counter()
                model(x)
                seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(v[WARMUP:]) for name, v in seconds.items()}


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps per variant (30)")
    args = parser.parse_args(argv)
    steps = args.steps or (10 if args.quick else 30)
    batches = 12 if args.quick else 30
    common.header("Memory format: channels-last against contiguous", args.quick)

    cfg = common.bench_config(args.overrides, name="bench-memory-format")
    res, _ = common.connect(cfg)
    exp = common.experiment(cfg, res)
    job = common.round1_setup(exp)["job"]
    train = training_step_s(job, steps)
    rows = exp.data.rows("train")
    size = (rows[0]["height"], rows[0]["width"])
    infer = inference_s(cfg, exp.data.num_classes, size, batches)
    base_train, base_infer = train["contiguous (NCHW)"], infer["contiguous (NCHW)"]
    print(
        common.table(
            ["variant", "train step ms", "x contiguous", "teacher forward ms", "x contiguous"],
            [
                [
                    name,
                    1000 * train[name],
                    train[name] / base_train,
                    1000 * infer[name],
                    infer[name] / base_infer,
                ]
                for name in train
            ],
            f"Medians: {steps} training steps ({job.train.labeled_batch} labeled + "
            f"{job.train.pseudo_batch} pool images, {job.train.cpus_per_worker} threads), "
            f"{batches} teacher batches of {cfg.teacher.batch_size} at {size[0]}x{size[1]} "
            f"(1 thread); load {common.load1():.1f}",
        )
    )
    common.write_json(
        args.json,
        {
            "machine": common.machine(),
            "steps": steps,
            "batches": batches,
            "train_step_s": train,
            "teacher_forward_s": infer,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
