"""Student training: one epoch through Ray Train against a plain PyTorch loop doing the same steps.

The plain loop runs, in this process, exactly what ``student.train_loop`` runs on a Ray Train
worker: ``init_model``, ``build_datasets``, ``epoch_streams`` and ``train_epoch`` with the same
seeds, so both see the same model, batches and augmentation; then the same validation pass and
checkpoint write. The job is the round loop's own round-1 ``StudentJob`` (``jobs.student_job`` for
round 1 on ``configs/default.yaml``, after an untrained round 0's teacher pass and acquisition by
``Experiment.teach`` and ``Experiment.acquire``), cut to one epoch, so the batches mix labeled and
pseudo-labeled images.

Figures: steps/s and images/s inside the loop (Ray's from the ``train/seconds`` metric rank 0
reports), end-to-end seconds, and Ray Train's fixed cost: fit() wall time minus in-loop time,
minus what the same set-up/validation/checkpoint cost without Ray.

    .venv/bin/python benchmarks/student_epoch.py              # 10 steps x 3 repeats: ~5 min
    .venv/bin/python benchmarks/student_epoch.py --steps 25   # the default config's whole epoch
    .venv/bin/python benchmarks/student_epoch.py --quick      # 4 steps once: ~1-2 min
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def epoch_job(job, steps: int, workers: int, cpus_per_worker: int):
    """One epoch of ``steps`` on ``workers`` workers of ``cpus_per_worker`` CPUs (and threads)."""
    return common.one_epoch(job, steps, num_workers=workers, cpus_per_worker=cpus_per_worker)


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps in the epoch (default 10; the default config's epoch is 25; --quick: 4)",
    )
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    common.header("Student epoch: Ray Train vs plain PyTorch", args.quick)
    from s4al_ray.layout import RunLayout
    from s4al_ray.student_trainer import fit_student

    cfg = common.bench_config(args.overrides, name="bench-student")
    res, _ = common.connect(cfg)
    exp = common.experiment(cfg, res)
    setup = common.round1_setup(exp)
    job = setup["job"]
    steps = args.steps or (4 if args.quick else 10)
    cpus = res.cpus
    one = epoch_job(job, steps, 1, cpus)
    two = epoch_job(job, steps, 2, max(1, cpus // 2))
    train = job.train
    per_step = train.labeled_batch + train.pseudo_batch
    print(
        f"round-1 batches: {train.labeled_batch} labeled + {train.pseudo_batch} pseudo-labeled "
        f"images per worker per step, crop {job.crop}, {job.num_labeled} labeled / "
        f"{job.num_pool} pool images; {steps} steps, {repeat} repeat(s)"
    )
    counter = iter(range(10**6))

    def ray_fit(fit_job):
        def go():
            i = next(counter)
            # A fresh run name and storage: never a resume.
            fit = RunLayout(exp.layout.scratch(f"fit_{i:03d}"))
            run = replace(
                fit_job,
                run_name=f"bench-{i:03d}-round{fit_job.round:03d}",
                train_dir=fit.train_dir,
                checkpoint_uri=fit.checkpoint(fit_job.round),
            )
            started = time.perf_counter()
            with common.quiet_stdout():
                result = fit_student(run)
            wall = time.perf_counter() - started
            return {"loop_s": result.metrics["train/seconds"], "wall_s": wall}

        return go

    def plain(plain_job):
        return lambda: common.plain_epoch(plain_job)

    variants = {
        f"ray 1 worker x {cpus} CPU": ray_fit(one),
        f"ray 2 workers x {max(1, cpus // 2)} CPU": ray_fit(two),
        f"plain {cpus} threads": plain(one),
    }
    if not args.quick:
        variants["plain 1 thread"] = plain(epoch_job(job, steps, 1, 1))
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
        rows.append(
            [
                name,
                f"{steps / loop:.2f}",
                f"{images / loop:.1f}",
                f"{(images / loop) / (per_step * steps / plain_loop):.2f}",
                f"{wall:.1f}",
                f"{fixed:.1f}",
                f"{fixed - plain_other:.1f}" if name.startswith("ray") else "-",
                f"{s.load:.1f}",
            ]
        )
    print(
        common.table(
            [
                "variant",
                "steps/s",
                "images/s",
                "images/s x plain",
                "end-to-end s",
                "wall - loop s",
                "Ray-only fixed s",
                "load",
            ],
            rows,
            f"One epoch of {steps} steps (median of {repeat})",
        )
    )
    parts = {
        k: samples[plain_name].extra_median(k) for k in ("setup_s", "loop_s", "eval_s", "ckpt_s")
    }
    print(
        f"\nplain {cpus} threads, parts (s): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
    )
    r1 = samples[f"ray 1 worker x {cpus} CPU"]
    r2 = samples[f"ray 2 workers x {max(1, cpus // 2)} CPU"]
    print(
        f"Ray 1 worker / plain, in-loop: {plain_loop / r1.extra_median('loop_s'):.2f}x; "
        f"end-to-end: {samples[plain_name].median / r1.median:.2f}x"
    )
    print(
        f"Ray 2 workers / 1 worker, images/s in-loop: "
        f"{2 * r1.extra_median('loop_s') / r2.extra_median('loop_s'):.2f}x; end-to-end per "
        f"image: {2 * r1.median / r2.median:.2f}x"
    )
    common.write_json(
        args.json,
        {
            "machine": common.machine(),
            "steps": steps,
            "repeat": repeat,
            "images_per_step_per_worker": per_step,
            "variants": {k: v.as_dict() for k, v in samples.items()},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
