"""Input pipeline: loader CPU per image and the whole train step, before/after batched augmentation.

Before: the per-sample path of commit ``OLD_COMMIT`` (its ``data/augment.py``, read from git at
run time): the loader decodes, composes the target and augments each sample on the CPU
(``weak_augment`` / ``strong_augment``), the step mixes the batch on the CPU. After: this tree:
the loader decodes and composes (``LabeledImages`` / ``PoolImages`` + ``collate_decoded``), and
``student.train_step`` augments and mixes the batch on its device.

1. Loader CPU seconds per image (``time.process_time`` on one thread, as a DataLoader worker runs;
   decode cache warm), labeled and pool images, at 96x128 (``configs/default.yaml``'s synthetic
   scenes, its round-1 ``StudentJob`` from ``jobs.student_job`` and ``build_datasets``) and at
   688x688 (the Cityscapes crop, from 1024x2048 images generated in memory).
2. What moved: the on-device augmentation of one batch (``student.augment_batches``), here on the
   CPU, per image (on a GPU this is the share the issue's 5% target is about).
3. The whole train step on this CPU (the default job: 4 labeled + 4 pool images, 96x128, the
   default model, ``train.cpus_per_worker`` threads): loader work + augmentation + mixing +
   forward + backward + SGD, both paths on the same images, interleaved.

The 96x128 pseudo-labels are the ground truth with a per-class confidence (the teacher's maps
are as smooth); decoding them is the same work before and after.

    .venv/bin/python benchmarks/input_pipeline.py           # ~2 min
    .venv/bin/python benchmarks/input_pipeline.py --quick   # ~20 s
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (sets OMP_WAIT_POLICY before torch is imported)
import numpy as np  # noqa: E402
import torch  # noqa: E402

OLD_COMMIT = "67e19fb2307d39122b4ea1c68f8654bf8a3e2549"  # the last per-sample augmentation


def old_augment():
    """``s4al_ray/data/augment.py`` as of ``OLD_COMMIT`` (needs the repository's git history)."""
    return common.module_at(OLD_COMMIT, "s4al_ray/data/augment.py", "old_augment")


# -- the two loaders: what a DataLoader worker does per image


def old_batch(old, dataset, indices, crop, generator, strong: bool):
    """The old ``__getitem__`` per image (decoded arrays -> float tensors -> per-sample
    augmentation), then the default collate."""
    from s4al_ray.data.training import image_tensor

    augment = old.strong_augment if strong else old.weak_augment
    pairs = []
    for index in indices:
        image, target = dataset[index]
        target = torch.from_numpy(target.astype(np.int64))
        pairs.append(augment(image_tensor(image), target, crop, generator))
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def new_batch(dataset, indices):
    from s4al_ray.data.training import collate_decoded

    return collate_decoded([dataset[i] for i in indices])


def loader_cpu(fn, count: int, batch: int) -> float:
    """CPU seconds per image of ``fn(indices)`` over images 0..count-1, ``batch`` at a time."""
    started = time.process_time()
    for start in range(0, count, batch):
        fn([(start + k) % count for k in range(batch)])
    return (time.process_time() - started) / (batch * -(-count // batch))


# -- data


def pseudo_parquet(uri: str, rows: list[dict], num_classes: int) -> None:
    """A teacher round's parquet for ``rows``: label = ground truth, a confidence per class."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from s4al_ray import storage
    from s4al_ray.data.io import encode_png, load_mask

    labels = [load_mask(r["mask_uri"]) for r in rows]
    levels = np.linspace(150, 250, max(num_classes, 2)).astype(np.uint8)
    confs = [np.where(m < num_classes, levels[np.minimum(m, num_classes - 1)], 0) for m in labels]
    table = pa.table(
        {
            "sample_id": [r["sample_id"] for r in rows],
            "label_png": [encode_png(m) for m in labels],
            "conf_png": [encode_png(c.astype(np.uint8)) for c in confs],
        }
    )
    fs, path = storage.filesystem(uri)
    fs.create_dir(path, recursive=True)
    pq.write_table(table, f"{path}/part-0.parquet", filesystem=fs)


def default_job(cfg):
    """Round 1 of the default run as ``jobs.student_job`` builds it, on round 0's pool state,
    with a teacher pass written from the ground truth (no Ray)."""
    from s4al_ray.data.registry import load_dataset
    from s4al_ray.jobs import TeacherSummary, initial_pool_state, student_job
    from s4al_ray.layout import RunLayout

    os.chdir(common.ROOT)  # data.root is relative to the repository
    data = load_dataset(cfg.data, cfg.seed, log=lambda line: None)
    state = initial_pool_state(cfg, data)
    layout = RunLayout.of(cfg.storage, cfg.name)
    by_id = {r["sample_id"]: r for r in data.rows("train")}
    pseudo_parquet(layout.teacher(0), [by_id[s] for s in state.pool_ids], data.num_classes)
    summary = TeacherSummary([cfg.teacher.threshold] * data.num_classes, 1.0, 0.0, 0.0)
    return student_job(cfg, data, state, layout, 1, summary)


def cityscapes_sets(count: int, crop=(688, 688)):
    """``count`` labeled and pool images of 1024x2048 (19 classes, blocky scenes) in memory."""

    from s4al_ray.data.io import encode_png
    from s4al_ray.data.training import DecodeCache, LabeledImages, PoolImages

    rng = np.random.default_rng(0)
    cache, items, pseudo = DecodeCache(max_bytes=1 << 34), [], {}
    for k in range(count):
        grid = rng.integers(0, 19, (16, 32), dtype=np.uint8)
        mask = np.kron(grid, np.ones((64, 64), np.uint8))
        image = (rng.integers(0, 256, (19, 3), dtype=np.uint8)[mask]).astype(np.uint8)
        item = {"sample_id": f"c{k}", "image_uri": f"mem://i{k}", "mask_uri": f"mem://m{k}"}
        item.update(height=1024, width=2048)
        cache.arrays[item["image_uri"]], cache.arrays[item["mask_uri"]] = image, mask
        conf = np.full(mask.shape, 200, np.uint8)
        pseudo[item["sample_id"]] = (encode_png(mask), encode_png(conf))
        items.append(item)
    labeled = LabeledImages(items, cache)
    pool = PoolImages(items, pseudo, [0.7] * 19, {}, 64, cache=cache)
    return labeled, pool


# -- the whole step, before and after


def old_step(old, model, optimizer, job, batch_l, batch_u, generator):
    """The old ``train_step`` on old loader batches: CPU mixing, then the same loss and step."""
    from s4al_ray.data.training import normalize
    from s4al_ray.losses.joint import joint_losses

    images_u, masks_u = old.cutmix(*batch_u, generator) if job.train.mix == "cutmix" else batch_u
    x = normalize(torch.cat([batch_l[0], images_u]))
    y = torch.cat([batch_l[1], masks_u])
    out = model(x, with_embedding=job.train.reco_weight > 0)
    losses = joint_losses(out, y, len(batch_l[0]), job.train, job.reco, generator)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    optimizer.step()


def step_variants(old, job, sets, steps: int):
    """{"before": fn, "after": fn}: ``steps`` whole train steps each, on the same images."""
    from s4al_ray.student import init_model, make_optimizer, train_step

    device = torch.device("cpu")
    train = job.train
    rng = torch.Generator().manual_seed(0)
    plan = [
        (
            torch.randint(len(sets.labeled), (train.labeled_batch,), generator=rng).tolist(),
            torch.randint(len(sets.pool), (train.pseudo_batch,), generator=rng).tolist(),
        )
        for _ in range(steps)
    ]
    torch.manual_seed(job.seed)
    fresh = replace(job, init_checkpoint=None)  # the weights do not change the step's cost
    models = {name: init_model(fresh).train() for name in ("before", "after")}
    optimizers = {name: make_optimizer(m, train) for name, m in models.items()}

    def before():
        g, model = torch.Generator().manual_seed(1), models["before"]
        for il, iu in plan:
            batch_l = old_batch(old, sets.labeled, il, job.crop, g, strong=False)
            batch_u = old_batch(old, sets.pool, iu, job.crop, g, strong=True)
            old_step(old, model, optimizers["before"], job, batch_l, batch_u, g)

    def after():
        g, model = torch.Generator().manual_seed(1), models["after"]
        for il, iu in plan:
            batch_l, batch_u = new_batch(sets.labeled, il), new_batch(sets.pool, iu)
            train_step(model, optimizers["after"], job, batch_l, batch_u, device, g)

    return {"before": before, "after": after}


def loader_rows(old, labeled, pool, crop, count: int, batch: int, repeat: int) -> dict:
    """Median loader CPU s per image: {(set, path): s}, interleaved over ``repeat``."""
    g = torch.Generator().manual_seed(0)
    variants = {
        ("labeled", "before"): lambda ix: old_batch(old, labeled, ix, crop, g, strong=False),
        ("labeled", "after"): lambda ix: new_batch(labeled, ix),
        ("pool", "before"): lambda ix: old_batch(old, pool, ix, crop, g, strong=True),
        ("pool", "after"): lambda ix: new_batch(pool, ix),
    }
    n = {"labeled": min(count, len(labeled)), "pool": min(count, len(pool))}
    samples = {key: common.Samples("/".join(key)) for key in variants}
    for (kind, _), fn in variants.items():  # warm the decode cache and the first-call costs
        loader_cpu(fn, n[kind], batch)
    for _ in range(repeat):
        for (kind, path), fn in variants.items():
            samples[(kind, path)].add(loader_cpu(fn, n[kind], batch))
    return samples


def device_aug_s(job, labeled, pool, batch: int, repeat: int) -> float:
    """CPU seconds per image of ``augment_batches`` (labeled + pool batch, mixing included)."""
    from s4al_ray.student import augment_batches

    ix = list(range(batch))
    batch_l, batch_u = new_batch(labeled, ix), new_batch(pool, ix)
    g, values = torch.Generator().manual_seed(0), []
    augment_batches(job, batch_l, batch_u, torch.device("cpu"), g)
    for _ in range(repeat):
        started = time.process_time()
        augment_batches(job, batch_l, batch_u, torch.device("cpu"), g)
        values.append((time.process_time() - started) / (2 * batch))
    return statistics.median(values)


def geometry_ms(image_size, crop, batch: int, repeat: int) -> dict:
    """CPU ms per batch of the strong geometry (rescale + crop/pad + flip, image bilinear, mask
    nearest) as ``augment.warp`` does it (torch ``grid_sample`` on a separable grid + gathered
    masks) and with kornia's ``warp_affine`` on the same per-sample matrices: the measurement
    behind ``augment.py``'s choice of torch for the geometry."""
    from kornia.geometry.transform import warp_affine

    from s4al_ray.data.augment import strong_params, warp

    images = torch.rand(batch, 3, *image_size)
    masks = torch.randint(0, 19, (batch, *image_size), dtype=torch.uint8)
    sizes = torch.tensor([image_size] * batch)
    params = strong_params(batch, torch.Generator().manual_seed(0), crop, sizes)
    scale = params["resized"].float() / sizes.float()  # (y, x); dst = scale * src - offset
    matrix = torch.zeros(batch, 2, 3)
    matrix[:, 0, 0], matrix[:, 1, 1] = scale[:, 1], scale[:, 0]
    matrix[:, 0, 2], matrix[:, 1, 2] = -params["offset"][:, 1], -params["offset"][:, 0]

    def kornia_warp():
        warp_affine(images, matrix, crop, mode="bilinear", align_corners=False)
        warp_affine(masks[:, None].float(), matrix, crop, mode="nearest", align_corners=False)

    variants = {"torch grid_sample (ours)": lambda: warp(images, masks, params, crop, True)}
    variants["kornia warp_affine"] = kornia_warp
    out = {}
    for name, fn in variants.items():
        fn()
        values = []
        for _ in range(repeat):
            started = time.process_time()
            fn()
            values.append(1000 * (time.process_time() - started))
        out[name] = statistics.median(values)
    return out


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="train steps per repeat (10)")
    args = parser.parse_args(argv)
    quick = args.quick
    repeat = args.repeat or (2 if quick else 5)
    steps = args.steps or (4 if quick else 10)
    common.header("Input pipeline: per-sample CPU augmentation vs batched on the device", quick)

    from s4al_ray.student import build_datasets

    old = old_augment()
    cfg = common.bench_config(args.overrides, name="bench-input-pipeline")
    job = default_job(cfg)
    sets = build_datasets(job)
    threads = job.train.cpus_per_worker
    print(
        f"before: per-sample augmentation of {OLD_COMMIT[:7]}; after: this tree. Default job: "
        f"{job.train.labeled_batch} labeled + {job.train.pseudo_batch} pool images, crop "
        f"{job.crop}, mix {job.train.mix}, {threads} threads for the step"
    )

    torch.set_num_threads(1)  # a DataLoader worker's thread
    rows, figures = [], {}
    cs = cityscapes_sets(2 if quick else 4)
    city_job = replace(job, crop=(688, 688))
    for label, (labeled, pool, crop, count, batch) in {
        "96x128": (sets.labeled, sets.pool, job.crop, 16 if quick else 64, 4),
        "688x688 (from 1024x2048)": (*cs, (688, 688), len(cs[0]), 2),
    }.items():
        samples = loader_rows(old, labeled, pool, crop, count, batch, repeat)
        aug_job = job if crop == job.crop else city_job
        moved = device_aug_s(aug_job, labeled, pool, batch, repeat)
        for kind in ("labeled", "pool"):
            b, a = samples[(kind, "before")].median, samples[(kind, "after")].median
            load = samples[(kind, "after")].load
            rows.append([label, kind, f"{1000 * b:.2f}", f"{1000 * a:.3f}", f"{b / a:.1f}", load])
            figures[f"{label} {kind}"] = {"before_s": b, "after_s": a, "ratio": b / a}
        figures[f"{label} device augmentation on CPU s/image"] = moved
        rows.append([label, "on-device aug. (here on CPU)", "-", f"{1000 * moved:.2f}", "-", "-"])
    geo = {
        "96x128, batch 8": geometry_ms((96, 128), job.crop, 8, 3 * repeat),
        "1024x2048 -> 688x688, batch 4": geometry_ms((1024, 2048), (688, 688), 4, repeat),
    }
    figures["geometry_ms_per_batch"] = geo
    print(
        common.table(
            ["images", "set", "before ms CPU/image", "after ms CPU/image", "before/after", "load"],
            rows,
            f"Loader CPU per image, 1 thread, cache warm (median of {repeat})",
        )
    )
    print(
        common.table(
            ["batch", *next(iter(geo.values()))],
            [[k, *(f"{v:.1f}" for v in row.values())] for k, row in geo.items()],
            "Strong geometry, CPU ms per batch, 1 thread: torch vs kornia",
        )
    )

    torch.set_num_threads(threads)
    variants = step_variants(old, job, sets, steps)
    for fn in variants.values():
        fn()  # warm-up: first-call allocations, kornia's kernels
    samples = common.interleave(variants, repeat)
    step = {k: s.median / steps for k, s in samples.items()}
    print(
        common.table(
            ["path", "s per step", "x before", "load"],
            [
                [k, f"{v:.3f}", f"{v / step['before']:.2f}", f"{samples[k].load:.1f}"]
                for k, v in step.items()
            ],
            f"Whole train step on this CPU, {threads} threads (median of {repeat} x {steps} steps)",
        )
    )
    pool_ratio = figures["96x128 pool"]["ratio"]
    per_step = {
        k: job.train.labeled_batch * figures["96x128 labeled"][f"{k}_s"]
        + job.train.pseudo_batch * figures["96x128 pool"][f"{k}_s"]
        for k in ("before", "after")
    }
    print(
        f"\n96x128 loader CPU per image of a step ({job.train.labeled_batch} labeled + "
        f"{job.train.pseudo_batch} pool): {per_step['before'] / per_step['after']:.1f}x less "
        f"(pool images {pool_ratio:.1f}x); train step after/before = "
        f"{step['after'] / step['before']:.2f}"
    )
    common.write_json(
        args.json,
        {
            "machine": common.machine(),
            "old_commit": OLD_COMMIT,
            "loader_cpu_s_per_image": figures,
            "step_s": step,
            "steps": steps,
            "repeat": repeat,
            "variants": {k: v.as_dict() for k, v in samples.items()},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
