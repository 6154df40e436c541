"""Exact rewrites of the step: the student's training step and the model's forward with and
without the atrous rewrites (``model/atrous.py``: skipped padding-only taps, phase-grid depthwise
convs on CPU) and ReCo's sparse backward (``losses/reco.py``: embedding_bag instead of the dense
gradient of a gather).

Every variant computes the same numbers (``tests/test_model.py``, ``tests/test_reco.py``); only
the route differs, switched off here by restoring the plain calls. Same process, same threads,
the round loop's own round-1 ``StudentJob`` (as ``step_cost.py`` builds it), the same seeds and
batches; variants alternate within each repeat.

    .venv/bin/python benchmarks/exact_rewrites.py            # 20 steps x 3 repeats: ~7 min
    .venv/bin/python benchmarks/exact_rewrites.py --quick    # 6 steps once: ~2 min
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from teacher_pass import raw_forward  # noqa: E402

VARIANTS = {
    "plain (before)": (False, False),
    "atrous rewrites": (True, False),
    "ReCo sparse backward": (False, True),
    "both (now)": (True, True),
}


@contextlib.contextmanager
def routes(atrous: bool, sparse_reco: bool):
    """The rewrites on or off: off restores the plain dilated conv / autograd's gather."""
    import torch

    from s4al_ray.losses import reco
    from s4al_ray.model.atrous import AtrousConv2d

    def dense_gather(queries, keys, neg):
        return (queries @ keys.T).gather(1, neg)

    with contextlib.ExitStack() as stack:
        if not atrous:
            stack.enter_context(mock.patch.object(AtrousConv2d, "forward", torch.nn.Conv2d.forward))
        if not sparse_reco:
            stack.enter_context(mock.patch.object(reco._GatheredScores, "apply", dense_gather))
        yield


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (20)")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    steps = args.steps or (6 if args.quick else 20)
    common.header("Exact rewrites: atrous convs and ReCo's backward", args.quick)

    cfg = common.bench_config(args.overrides, name="bench-exact-rewrites")
    res, _ = common.connect(cfg)
    exp = common.experiment(cfg, res)
    job = common.round1_setup(exp)["job"]
    import ray

    ray.shutdown()  # nothing of Ray's runs beside the timed work
    threads = res.cpus
    shape = (cfg.data.synthetic.height, cfg.data.synthetic.width)
    print(
        f"model {cfg.model.backbone} DeepLabv3+ (heads {cfg.model.head_channels}), batch "
        f"{job.train.labeled_batch} labeled + {job.train.pseudo_batch} pool images at {shape}, "
        f"{threads} threads; {steps} steps x {repeat} repeat(s)"
    )
    from s4al_ray.student import init_model

    model = init_model(job).eval()
    step_s: dict[str, list[float]] = {name: [] for name in VARIANTS}
    forward: dict[str, list[float]] = {name: [] for name in VARIANTS if not VARIANTS[name][1]}
    names = list(VARIANTS)
    for rep in range(repeat):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            with routes(*VARIANTS[name]):
                times = common.train_step_seconds(job, steps, threads)
                step_s[name].extend(times)
                line = f"median step {statistics.median(times):.3f} s"
                if name in forward:
                    forward[name].append(raw_forward(model, shape, 16, threads, 8))
                    line += f"  forward {forward[name][-1]:.1f} images/s"
            print(f"  rep {rep + 1}/{repeat}  {name:<22s} {line}  load {common.load1():.2f}")

    base = statistics.median(step_s["plain (before)"])
    rows = []
    for name in VARIANTS:
        value = statistics.median(step_s[name])
        images = statistics.median(forward[name]) if name in forward else None
        rows.append(
            [name, round(value, 3), round(base / value, 2), round(images, 1) if images else "-"]
        )
    print(
        common.table(
            ["route", "median train step s", "x plain", "forward images/s (batch 16)"],
            rows,
            f"{steps} steps x {repeat} repeat(s) a variant, {threads} threads",
        )
    )
    common.write_json(
        args.json,
        {
            "machine": common.machine(),
            "threads": threads,
            "steps": steps,
            "repeat": repeat,
            "median_step_s": {name: statistics.median(v) for name, v in step_s.items()},
            "forward_images_per_s": {name: statistics.median(v) for name, v in forward.items()},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
