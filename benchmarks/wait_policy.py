"""OpenMP wait policy: the student's training step with OpenMP's own waiting (spin briefly, then
sleep: what workers get now) against ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once: what every Ray
worker got before), on 1 and 2 threads, on quiet cores and beside one busy process.

libgomp reads the policy when torch loads it, so each variant runs in a fresh process (spawned
with the variant's environment): the round loop's own round-1 ``StudentJob`` (as
``step_cost.py`` builds it), ``student.train_step`` on the same seeds and batches, median of the
steps after a warm-up. Variants alternate within each repeat.

    .venv/bin/python benchmarks/wait_policy.py            # 20 steps x 2 repeats: ~8 min
    .venv/bin/python benchmarks/wait_policy.py --quick    # 8 steps once: ~3 min
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

POLICIES = {"OpenMP default (spin, then sleep)": "", "PASSIVE (sleep at once)": "PASSIVE"}


def _set_policy(policy: str) -> None:
    """Runs first in the new interpreter, before anything imports torch (and libgomp)."""
    os.environ.pop("OMP_WAIT_POLICY", None)
    if policy:
        os.environ["OMP_WAIT_POLICY"] = policy


def in_fresh_process(policy: str, job, steps: int, threads: int) -> list[float]:
    """``common.train_step_seconds`` in a new interpreter whose OpenMP reads ``policy``
    ('' = unset)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=1, mp_context=context, initializer=_set_policy, initargs=(policy,)
    ) as pool:
        return pool.submit(common.train_step_seconds, job, steps, threads).result()


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (20)")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 2)
    steps = args.steps or (8 if args.quick else 20)
    common.header("OpenMP wait policy: the student's train step", args.quick)

    cfg = common.bench_config(args.overrides, name="bench-wait-policy")
    res, _ = common.connect(cfg)
    exp = common.experiment(cfg, res)
    job = common.round1_setup(exp)["job"]
    import ray

    ray.shutdown()  # nothing of Ray's runs beside the timed processes
    variants = [(p, t) for p in POLICIES for t in (1, 2)]
    samples: dict[tuple, list[float]] = {}
    for load in (0, 1):
        with common.background_load(load):
            for rep in range(repeat):
                shift = rep % len(variants)
                for policy, threads in variants[shift:] + variants[:shift]:
                    times = in_fresh_process(POLICIES[policy], job, steps, threads)
                    samples.setdefault((load, policy, threads), []).extend(times)
                    step_median = statistics.median(times)
                    print(
                        f"  load {load} rep {rep + 1}/{repeat}  {policy:<34s} {threads} thread(s)"
                        f"  median step {step_median:.3f} s  load {common.load1():.2f}",
                        flush=True,
                    )
    median = {key: statistics.median(values) for key, values in samples.items()}
    rows = []
    for load in (0, 1):
        best = median[(load, next(iter(POLICIES)), 2)]
        for policy, threads in variants:
            value = median[(load, policy, threads)]
            rows.append(
                [
                    "quiet" if load == 0 else "1 busy process",
                    policy,
                    threads,
                    round(value, 3),
                    round(1 / value, 2),
                    round(value / best, 2),
                ]
            )
    print(
        common.table(
            ["cores", "wait policy", "threads", "median step s", "steps/s", "x default 2 threads"],
            rows,
            f"Student train step, round-1 batches, {steps} steps x {repeat} repeat(s) a variant",
        )
    )
    common.write_json(
        args.json,
        {
            "machine": common.machine(),
            "steps": steps,
            "repeat": repeat,
            "median_step_s": {f"load={k[0]} {k[1]} threads={k[2]}": v for k, v in median.items()},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
