"""Teacher pass: Ray Data ``run_teacher`` against a plain PyTorch loop doing the same work.

Both sides run the teacher's three stages (``teacher_stages.py``: read + decode, the model,
post-process: label/confidence PNGs, region scores, histograms, acquisition candidates) and write
the same pseudo-label parquet: the Ray side as the streaming pipeline, the plain side in turn in
this process. Images/s include reading and writing, and
each pass pays its own model load (as every round does). Also: 1 actor x 2 CPUs against 2 actors x
1 CPU, and the model's raw forward throughput on random tensors (the ceiling).

The teacher's job and rows are the ones the round loop builds (``jobs.teacher_job`` and
``jobs.teacher_rows`` for round 0 on ``configs/default.yaml``, after a run of its own teacher stage
``Experiment.teach``); variants differ from it only in workers and CPUs per worker. The checkpoint
is an untrained round-0 one (speed does not depend on the weights).

    .venv/bin/python benchmarks/teacher_pass.py            # ~5 min on 2 loaded cores
    .venv/bin/python benchmarks/teacher_pass.py --quick    # ~1-2 min (64 images, once)
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import numpy as np  # noqa: E402


def plain_teacher(rows: list[dict], job, output_uri: str) -> None:
    """The same work as ``run_teacher`` without Ray: one process, ``job.cpus_per_worker``
    threads, batches of ``job.batch_size``, the same three stages in turn."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from s4al_ray import storage
    from s4al_ray.teacher import size_groups
    from s4al_ray.teacher_stages import TeacherModel, predict_rows

    storage.delete_dir(output_uri)
    fs, path = storage.filesystem(output_uri)
    model = TeacherModel(job)  # model build + checkpoint load, as each actor does
    batch_size = job.batch_size
    for index, subset in enumerate(size_groups(rows)):
        tables = []
        for start in range(0, len(subset), batch_size):
            tables.append(predict_rows(model, subset[start : start + batch_size], job))
        fs.create_dir(f"{path}/size_{index:02d}", recursive=True)
        pq.write_table(
            pa.concat_tables(tables), f"{path}/size_{index:02d}/part-00000.parquet", filesystem=fs
        )


def breakdown(rows: list[dict], job) -> dict:
    """Seconds per image of each stage of a teacher batch, in this process (threads as the job)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from s4al_ray.teacher_stages import TeacherModel, decode_images, summarize_batch

    t0 = time.perf_counter()
    model = TeacherModel(job)
    init_s = time.perf_counter() - t0
    batch_size = job.batch_size
    parts = {
        "read+decode": 0.0,
        "model (forward, score)": 0.0,
        "post-process (PNGs, region scores, hist, candidates)": 0.0,
    }
    tables = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = {k: np.asarray([r[k] for r in chunk]) for k in chunk[0] if k != "acquired"}
        batch["acquired"] = np.empty(len(chunk), dtype=object)
        batch["acquired"][:] = [list(r["acquired"]) for r in chunk]
        t0 = time.perf_counter()
        decoded = decode_images(batch)
        t1 = time.perf_counter()
        predicted = model(decoded)
        t2 = time.perf_counter()
        tables.append(summarize_batch(predicted, job))
        t3 = time.perf_counter()
        parts["read+decode"] += t1 - t0
        parts["model (forward, score)"] += t2 - t1
        parts["post-process (PNGs, region scores, hist, candidates)"] += t3 - t2
    t0 = time.perf_counter()
    pq.write_table(pa.concat_tables(tables), io.BytesIO())
    parts["parquet write"] = time.perf_counter() - t0
    per_image = {k: v / len(rows) for k, v in parts.items()}
    per_image["model init (once per pass)"] = init_s
    return per_image


def raw_forward(
    model, shape: tuple[int, int], batch_size: int, threads: int, batches: int
) -> float:
    """Images/s of ``model(normalize(x))`` on random tensors (no I/O, no post-processing)."""
    import torch

    from s4al_ray.data.training import normalize

    torch.set_num_threads(threads)
    x = torch.rand(batch_size, 3, *shape)
    with torch.no_grad():
        model(normalize(x))  # warm-up
        started = time.perf_counter()
        for _ in range(batches):
            model(normalize(x))
    return batch_size * batches / (time.perf_counter() - started)


def compare_outputs(uri_a: str, uri_b: str) -> float:
    """Share of images whose label PNG is byte-identical in both outputs (same weights)."""
    import pyarrow.parquet as pq

    from s4al_ray import storage

    def labels(uri):
        fs, path = storage.filesystem(uri)
        table = pq.read_table(path, filesystem=fs, columns=["sample_id", "label_png"])
        return dict(
            zip(table.column("sample_id").to_pylist(), table.column("label_png").to_pylist())
        )

    a, b = labels(uri_a), labels(uri_b)
    if set(a) != set(b):
        return 0.0
    return sum(a[k] == b[k] for k in a) / max(len(a), 1)


def main(argv=None) -> int:
    args = common.base_parser(__doc__.splitlines()[0]).parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    common.header("Teacher pass: Ray Data vs plain PyTorch", args.quick)
    import torch

    from s4al_ray.teacher import run_teacher
    from s4al_ray.teacher_stages import TeacherModel

    cfg = common.bench_config(args.overrides, name="bench-teacher")
    res, init_s = common.connect(cfg)
    print(f"ray: {res.cpus} CPU, {res.gpus} GPU (ray.init {init_s:.1f}s)")
    exp = common.experiment(cfg, res)
    checkpoint = common.save_untrained_checkpoint(exp, 0)
    t0 = time.perf_counter()
    # The round loop's own teacher stage, once (a warm-up), and the job and rows it ran on.
    call = common.teacher_call(exp, 0, common.current_state(exp, 0), checkpoint)
    tjob = call.job
    print(
        f"round loop's teacher pass: {len(call.rows)} images, {tjob.num_workers} worker(s) x "
        f"{tjob.cpus_per_worker} CPU, batch {tjob.batch_size} "
        f"({time.perf_counter() - t0:.1f}s incl. reading the output)"
    )
    rows, batch = call.rows, tjob.batch_size
    if args.quick:
        rows = rows[:64]
    n = len(rows)
    # The same pool 4 times over (new ids, same files): the per-image (marginal) rate is
    # (4n - n) / (t(4n) - t(n)), separating throughput from the fixed cost of a pass.
    big = [{**r, "sample_id": f"{r['sample_id']}~{k}"} for k in range(4) for r in rows]
    out = exp.layout.scratch
    cpus = res.cpus
    one = replace(tjob, cpus_per_worker=cpus)
    per_actor = replace(tjob, cpus_per_worker=1)

    passes = iter(range(10**6))

    def ray_pass(items: list, job, where: str, workers: int):
        # A new checkpoint stamp per pass: task workers reload the model, as they do for each
        # round's checkpoint.
        def go():
            stamp = f"{job.checkpoint_stamp}/{next(passes)}"
            return {
                "ray_s": run_teacher(
                    replace(job, num_workers=workers, checkpoint_stamp=stamp), items, out(where)
                )
            }

        return go

    def plain_pass(items: list, job, where: str):
        return lambda: plain_teacher(items, job, out(where))

    actor_pool = replace(per_actor, reuse_workers=False)
    ray_n, ray_1 = f"ray {cpus} tasks x 1 CPU", f"ray 1 task x {cpus} CPU"
    ray_a = f"ray {cpus} actors x 1 CPU"
    plain_n, plain_1 = f"plain {cpus} threads", "plain 1 thread"
    variants = {
        ray_n: ray_pass(rows, replace(per_actor, reuse_workers=True), "ray_n", cpus),
        ray_1: ray_pass(rows, replace(one, reuse_workers=True), "ray_1", 1),
        ray_a: ray_pass(rows, actor_pool, "ray_a", cpus),
        plain_n: plain_pass(rows, one, "plain_n"),
        plain_1: plain_pass(rows, per_actor, "plain_1"),
    }
    if not args.quick:
        variants[ray_n + ", 4x pool"] = ray_pass(big, per_actor, "ray_big", cpus)
        variants[plain_n + ", 4x pool"] = plain_pass(big, one, "plain_big")
    print(f"\n{n} images {rows[0]['height']}x{rows[0]['width']}, {repeat} repeat(s), interleaved:")
    samples = common.interleave(variants, repeat)
    torch.set_num_threads(cpus)
    same = compare_outputs(out("ray_n"), out("plain_n"))

    # The ceiling: the model alone on random tensors, same process, same batch.
    model = TeacherModel(one).model
    shape = (rows[0]["height"], rows[0]["width"])
    batches = 2 if args.quick else 6
    ceiling = common.Samples("forward")
    for threads in (1, cpus):
        for _ in range(repeat):
            ips = raw_forward(model, shape, batch, threads, batches)
            ceiling.add(ips, threads=threads)
    fwd = {
        t: statistics.median(
            [v for v, e in zip(ceiling.values, ceiling.extra) if e["threads"] == t]
        )
        for t in (1, cpus)
    }
    fwd_load = ceiling.load
    parts = breakdown(rows[: 4 * batch] if not args.quick else rows[:batch], per_actor)
    torch.set_num_threads(cpus)

    ips = {
        name: (4 * n if name.endswith("4x pool") else n) / s.median for name, s in samples.items()
    }
    best_plain = max(ips[plain_n], ips[plain_1])
    rows_out = [
        [
            name,
            f"{samples[name].median:.2f}",
            f"{ips[name]:.1f}",
            f"{ips[name] / best_plain:.2f}",
            f"{samples[name].load:.1f}",
        ]
        for name in samples
    ]
    rows_out.append(
        [
            "raw forward, 1 thread (ceiling of one 1-CPU actor)",
            "-",
            f"{fwd[1]:.1f}",
            f"{fwd[1] / best_plain:.2f}",
            f"{fwd_load:.1f}",
        ]
    )
    rows_out.append(
        [
            f"raw forward, {cpus} threads",
            "-",
            f"{fwd[cpus]:.1f}",
            f"{fwd[cpus] / best_plain:.2f}",
            f"{fwd_load:.1f}",
        ]
    )
    print(
        common.table(
            ["variant", "median s", "images/s", "x best plain", "load"],
            rows_out,
            f"Teacher pass over {n} pool images (median of {repeat})",
        )
    )
    print(
        f"\nRay ({ray_n}, the default) / {plain_n} = {ips[ray_n] / ips[plain_n]:.2f}x; / best "
        f"plain = {ips[ray_n] / best_plain:.2f}x; {ray_n} / {ray_1} = "
        f"{ips[ray_n] / ips[ray_1]:.2f}x; "
        f"tasks / actor pool = {ips[ray_n] / ips[ray_a]:.2f}x"
    )
    marginal = {}
    if not args.quick:
        for name in (ray_n, plain_n):
            extra = samples[name + ", 4x pool"].median - samples[name].median
            rate = 3 * n / extra if extra > 0 else float("inf")
            marginal[name] = {"images_per_s": rate, "fixed_s": samples[name].median - n / rate}
        print(
            common.table(
                ["variant", "marginal images/s", "fixed s per pass", "x plain marginal"],
                [
                    [
                        k,
                        f"{v['images_per_s']:.1f}",
                        f"{v['fixed_s']:.1f}",
                        f"{v['images_per_s'] / marginal[plain_n]['images_per_s']:.2f}",
                    ]
                    for k, v in marginal.items()
                ],
                "Throughput once running vs fixed cost per pass (from n and 4n images)",
            )
        )
    print(f"label PNGs identical between Ray and plain outputs: {100 * same:.0f}% of images")
    print(
        common.table(
            ["part (plain, 1 thread)", "ms per image"],
            [
                [k, f"{1000 * v:.2f}" if "init" not in k else f"{1000 * v:.0f} (per pass)"]
                for k, v in parts.items()
            ],
            "Where a teacher image's time goes",
        )
    )
    common.write_json(
        args.json,
        {
            "machine": common.machine(),
            "images": n,
            "repeat": repeat,
            "batch_size": batch,
            "variants": {k: v.as_dict() for k, v in samples.items()},
            "images_per_s": ips,
            "marginal": marginal,
            "raw_forward_images_per_s": fwd,
            "raw_forward_load": fwd_load,
            "breakdown_s_per_image": parts,
            "identical_label_share": same,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
