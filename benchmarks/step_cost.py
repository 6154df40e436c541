"""Step cost: one student iteration of S4AL+ self-training against the S4AL mean-teacher variant.

The paper's first observation: S4AL+ makes its pseudo-labels once per round, offline, so a
training iteration is one forward/backward of the student; the mean teacher also runs the EMA
teacher forward on the pool batch, thresholds it, strongly augments the labeled pair and updates
the EMA weights, every iteration. Both variants here run ``student.train_step`` (what every Ray
Train worker runs) on the same model, the same round-1 batches (the round loop's own round-1
``StudentJob``, ``jobs.student_job`` on ``configs/default.yaml``) and the same threads, interleaved
in one run; only ``train.method`` differs. Seconds per iteration exclude set-up, validation and
checkpointing.

    .venv/bin/python benchmarks/step_cost.py             # 20 steps x 3 repeats: ~4 min
    .venv/bin/python benchmarks/step_cost.py --quick     # 5 steps once: ~1 min
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def method_job(job, method: str, steps: int, threads: int):
    """``job`` with ``train.method`` set, one epoch of ``steps``, on ``threads`` threads."""
    return common.one_epoch(job, steps, method=method, cpus_per_worker=threads)


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="iterations per repeat (20)")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    steps = args.steps or (5 if args.quick else 20)
    common.header("Step cost: S4AL+ self-training vs S4AL mean teacher", args.quick)

    cfg = common.bench_config(args.overrides, name="bench-step-cost")
    res, _ = common.connect(cfg)
    exp = common.experiment(cfg, res)
    job = common.round1_setup(exp)["job"]
    train = job.train
    print(
        f"model {cfg.model.backbone} DeepLabv3+ (heads {cfg.model.head_channels}), batch "
        f"{train.labeled_batch} labeled + {train.pseudo_batch} pool images, crop "
        f"{job.crop}, {res.cpus} threads; {steps} steps x {repeat} repeat(s)"
    )
    names = {"S4AL+ self-training": "self_training", "S4AL mean teacher": "mean_teacher"}
    variants = {
        label: (lambda j=method_job(job, method, steps, res.cpus): common.plain_epoch(j))
        for label, method in names.items()
    }
    samples = common.interleave(variants, repeat)
    step_s = {label: s.extra_median("step_s") for label, s in samples.items()}
    base = step_s["S4AL+ self-training"]
    print(
        common.table(
            ["method", "s per iteration", "x self-training", "load"],
            [
                [label, f"{v:.3f}", f"{v / base:.2f}", f"{samples[label].load:.1f}"]
                for label, v in step_s.items()
            ],
            f"Seconds per student iteration (median of {repeat} x {steps} steps)",
        )
    )
    ratio = step_s["S4AL mean teacher"] / base
    print(f"\nmean teacher / self-training = {ratio:.2f}x per iteration")
    common.write_json(
        args.json,
        {
            "machine": common.machine(),
            "steps": steps,
            "repeat": repeat,
            "step_s": step_s,
            "ratio": ratio,
            "variants": {k: v.as_dict() for k, v in samples.items()},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
