"""Exact rewrites of the step: the student's training step and the model's forward with and
without the atrous rewrites (``model/atrous.py``: skipped padding-only taps, phase-grid depthwise
convs on CPU) and ReCo's sparse backward (``losses/reco.py``: embedding_bag instead of the dense
gradient of a gather); then each rewritten layer alone, train and inference.

Every variant computes the same numbers (``tests/test_model.py``, ``tests/test_reco.py``); only
the route differs, switched off here by restoring the plain calls. Same process, same threads,
the round loop's own round-1 ``StudentJob`` (as ``step_cost.py`` builds it), the same seeds and
batches; variants alternate within each repeat.

    .venv/bin/python benchmarks/exact_rewrites.py            # 20 steps x 3 repeats: ~5 min
    .venv/bin/python benchmarks/exact_rewrites.py --quick    # 6 steps once: ~2 min
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
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
            stack.enter_context(mock.patch.object(reco, "gathered_scores", dense_gather))
        yield


# The model's atrous convs at the default size (96x128 at output stride 16: 6x8 maps), batch 8:
# (label, channels in, channels out, groups, dilation). Depthwise: MobileNetV2's last blocks.
CONV_SHAPES = [
    ("depthwise 960, d=2", 960, 960, 960, 2),
    ("depthwise 576, d=2", 576, 576, 576, 2),
    ("ASPP 320->128, rate 6", 320, 128, 1, 6),
    ("ASPP 320->128, rate 12", 320, 128, 1, 12),
    ("ASPP 320->128, rate 18", 320, 128, 1, 18),
]


def _ms_per_call(fn, calls: int) -> float:
    for _ in range(3):
        fn()
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e3


def layer_timings(threads: int, calls: int, size: tuple[int, int] = (6, 8)) -> list[list]:
    """Per layer: ms of forward + backward (training) and of forward alone (inference), the
    rewrite against the plain call (and, for depthwise convs, inference on the phase grids); and
    ReCo's negative logits at the default run's size."""
    import torch

    from s4al_ray.losses import reco
    from s4al_ray.model.atrous import AtrousConv2d, phase_grid_conv

    torch.set_num_threads(threads)
    rows = []
    for label, c_in, c_out, groups, d in CONV_SHAPES:
        conv = AtrousConv2d(c_in, c_out, 3, padding=d, dilation=d, groups=groups, bias=False)
        x = torch.randn(8, c_in, *size).to(memory_format=torch.channels_last).requires_grad_()

        def train(conv=conv, x=x):
            conv(x).sum().backward()

        def infer(conv=conv, x=x):
            with torch.no_grad():
                conv(x)

        def infer_on_phase_grids(conv=conv, x=x, d=d):
            # What inference would cost on the phase grids (why no_grad keeps the direct call).
            with torch.no_grad():
                phase_grid_conv(x, conv.weight, None, d, (d, d), conv.groups)

        figures = []
        for fn in (train, infer):
            for atrous in (True, False):
                with routes(atrous, True):
                    figures.append(_ms_per_call(fn, calls))
        if groups == c_in == c_out:
            figures.append(_ms_per_call(infer_on_phase_grids, calls))
        rows.append([label, *(round(v, 2) for v in figures)] + ["-"] * (5 - len(figures)))
    # The default run's ReCo: 9 classes x 128 queries, 256 negatives, 64-dim keys, ~5,700 pixels.
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(9, 128, 64, generator=generator, requires_grad=True)
    keys = torch.randn(5700, 64, generator=generator)
    neg = torch.randint(0, 5700, (9, 128, 256), generator=generator)
    figures = []
    for sparse in (True, False):
        with routes(True, sparse):
            figures.append(
                _ms_per_call(
                    lambda: reco.negative_logits(queries, keys, neg).sum().backward(), calls
                )
            )
    rows.append(
        ["ReCo negative logits (1152 x 256)", *(round(v, 2) for v in figures), "-", "-", "-"]
    )
    return rows


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
                    forward[name].append(raw_forward(model, shape, 16, threads, 30))
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
            ["route", "median train step s", "x plain", "forward images/s (30 batches of 16)"],
            rows,
            f"{steps} steps x {repeat} repeat(s) a variant, {threads} threads",
        )
    )
    layers = layer_timings(threads, 10 if args.quick else 50)
    print(
        common.table(
            [
                "layer (batch 8, 6x8 map)",
                "train ms, rewrite",
                "train ms, plain",
                "inference ms, rewrite",
                "inference ms, plain",
                "inference ms, phase grids (unused)",
            ],
            layers,
            f"One layer, forward + backward (train), forward alone (inference); {threads} threads",
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
            "layers_ms": {row[0]: row[1:] for row in layers},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
