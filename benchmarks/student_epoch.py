"""Student training: one epoch through Ray Train against a plain PyTorch loop doing the same steps.

The plain loop runs, in this process, exactly what ``student.train_loop`` runs on a Ray Train
worker: ``_init_model``, ``_build_datasets``, ``epoch_streams`` and ``train_epoch`` with the same
seeds, so both see the same model, batches and augmentation; then the same validation pass and
checkpoint write. The config is the round loop's own round-1 ``loop_config``
(``Experiment._loop_config(1, state)`` on ``configs/default.yaml``, after an untrained round 0's
teacher pass and acquisition), so the batches mix labeled and pseudo-labeled images.

Figures: steps/s and images/s inside the loop (Ray's from the ``train/seconds`` metric rank 0
reports), end-to-end seconds, and Ray Train's fixed cost: fit() wall time minus in-loop time,
minus what the same set-up/validation/checkpoint cost without Ray.

    .venv/bin/python benchmarks/student_epoch.py              # 10 steps x 3 repeats: ~5 min
    .venv/bin/python benchmarks/student_epoch.py --steps 25   # the default config's whole epoch
    .venv/bin/python benchmarks/student_epoch.py --quick      # 4 steps once: ~1-2 min
"""

from __future__ import annotations

import copy
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def epoch_config(loop_config: dict, steps: int, workers: int, cpus_per_worker: int) -> dict:
    cfg = copy.deepcopy(loop_config)
    cfg["train"].update(epochs=1, steps_per_epoch=steps, num_workers=workers,
                        cpus_per_worker=cpus_per_worker)
    cfg["threads"] = cpus_per_worker  # as Experiment._loop_config sets it
    return cfg


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="steps in the epoch (default 10; the default config's epoch is 25; "
                             "--quick: 4)")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    common.header("Student epoch: Ray Train vs plain PyTorch", args.quick)
    from s4al_ray.student import fit_student

    cfg = common.bench_config(args.overrides, name="bench-student")
    res, _ = common.connect(cfg)
    exp = common.experiment(cfg, res)
    setup = common.round1_setup(exp)
    lc = setup["loop_config"]
    steps = args.steps or (4 if args.quick else 10)
    cpus = res.cpus
    one = epoch_config(lc, steps, 1, cpus)
    two = epoch_config(lc, steps, 2, max(1, cpus // 2))
    per_step = lc["train"]["labeled_batch"] + lc["train"]["pseudo_batch"]
    print(f"round-1 batches: {lc['train']['labeled_batch']} labeled + {lc['train']['pseudo_batch']} "
          f"pseudo-labeled images per worker per step, crop {lc['crop']}, {len(lc['labeled_items'])} "
          f"labeled / {len(lc['pool_items'])} pool images; {steps} steps, {repeat} repeat(s)")
    counter = iter(range(10 ** 6))

    def ray_fit(config: dict):
        def go():
            i = next(counter)
            run_dir = exp._uri("bench", f"fit_{i:03d}")  # a fresh run name: never a resume
            started = time.perf_counter()
            with common.quiet_stdout():
                result = fit_student(config, run_dir, f"bench-{i:03d}")
            wall = time.perf_counter() - started
            return {"loop_s": result.metrics["train/seconds"], "wall_s": wall}
        return go

    def plain(config: dict):
        return lambda: common.plain_epoch(config)

    variants = {f"ray 1 worker x {cpus} CPU": ray_fit(one),
                f"ray 2 workers x {max(1, cpus // 2)} CPU": ray_fit(two),
                f"plain {cpus} threads": plain(one)}
    if not args.quick:
        variants["plain 1 thread"] = plain(epoch_config(lc, steps, 1, 1))
    samples = common.interleave(variants, repeat)

    rows = []
    plain_name = f"plain {cpus} threads"
    plain_loop = samples[plain_name].extra_median("loop_s")
    plain_other = samples[plain_name].median - plain_loop  # setup + eval + checkpoint, no Ray
    for name, s in samples.items():
        workers = 2 if name.startswith("ray 2") else 1
        loop = s.extra_median("loop_s")
        images = workers * per_step * steps
        wall = s.median
        fixed = wall - loop
        rows.append([name, f"{steps / loop:.2f}", f"{images / loop:.1f}",
                     f"{(images / loop) / (per_step * steps / plain_loop):.2f}", f"{wall:.1f}",
                     f"{fixed:.1f}", f"{fixed - plain_other:.1f}" if name.startswith("ray") else "-",
                     f"{s.load:.1f}"])
    print(common.table(["variant", "steps/s", "images/s", "images/s x plain", "end-to-end s",
                        "wall - loop s", "Ray-only fixed s", "load"], rows,
                       f"One epoch of {steps} steps (median of {repeat})"))
    parts = {k: samples[plain_name].extra_median(k) for k in ("setup_s", "loop_s", "eval_s", "ckpt_s")}
    print(f"\nplain {cpus} threads, parts (s): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    r1 = samples[f"ray 1 worker x {cpus} CPU"]
    r2 = samples[f"ray 2 workers x {max(1, cpus // 2)} CPU"]
    print(f"Ray 1 worker / plain, in-loop: {plain_loop / r1.extra_median('loop_s'):.2f}x; "
          f"end-to-end: {samples[plain_name].median / r1.median:.2f}x")
    print(f"Ray 2 workers / 1 worker, images/s in-loop: "
          f"{2 * r1.extra_median('loop_s') / r2.extra_median('loop_s'):.2f}x; end-to-end per image: "
          f"{2 * r1.median / r2.median:.2f}x")
    common.write_json(args.json, {"machine": common.machine(), "steps": steps, "repeat": repeat,
                                  "images_per_step_per_worker": per_step,
                                  "variants": {k: v.as_dict() for k, v in samples.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
