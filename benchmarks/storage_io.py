"""Storage: bytes per pseudo-labeled image, and the student's input pipeline read throughput.

1. The teacher's parquet (written by the round loop's own teacher stage, ``Experiment.teach``, on
   ``configs/default.yaml`` with a round-0 student trained in-process for as many steps as the
   default round 0): bytes on disk per image, split by column, against the raw uint8 label +
   confidence maps; and what other PNG compression levels would give (size and
   encode time), since the confidence map is most of it.
2. ``LabeledImages`` / ``PoolImages.__getitem__`` (what every training step's loader calls:
   decode and target composition; the augmentation runs on the device) images/s with the
   decode cache warm and disabled, their decode-only part, against decoding the same files with
   plain PIL + numpy.

    .venv/bin/python benchmarks/storage_io.py            # ~2-3 min
    .venv/bin/python benchmarks/storage_io.py --quick    # ~1 min
"""

from __future__ import annotations

import io
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def parquet_sizes(uri: str) -> dict:
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from s4al_ray import storage

    fs, path = storage.filesystem(uri)
    files = [
        f
        for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
        if f.is_file and f.path.endswith(".parquet")
    ]
    on_disk = sum(f.size for f in files)
    table = pq.read_table(path, filesystem=fs)
    n = table.num_rows
    cols = {name: table.column(name).nbytes / n for name in table.column_names}
    label = table.column("label_png").to_pylist()
    conf = table.column("conf_png").to_pylist()
    return {
        "images": n,
        "files": len(files),
        "on_disk_bytes_per_image": on_disk / n,
        "column_bytes_per_image": cols,
        "label_png_mean": sum(map(len, label)) / n,
        "conf_png_mean": sum(map(len, conf)) / n,
        "sample_label": label[0],
        "sample_conf": conf[0],
    }


def png_alternatives(label_pngs: list[bytes], conf_pngs: list[bytes]) -> list[list]:
    """Bytes and encode ms per image of the label/confidence maps at other PNG settings."""
    import numpy as np
    from PIL import Image

    from s4al_ray.data.io import decode_mask

    labels = [decode_mask(b) for b in label_pngs]
    confs = [decode_mask(b) for b in conf_pngs]
    rows = []
    for name, maps in (("label", labels), ("confidence", confs)):
        raw = maps[0].nbytes
        for level in (0, 1, 6, 9):
            started = time.perf_counter()
            sizes = []
            for m in maps:
                buffer = io.BytesIO()
                Image.fromarray(np.ascontiguousarray(m), mode="L").save(
                    buffer, format="PNG", compress_level=level
                )
                sizes.append(len(buffer.getvalue()))
            ms = 1000 * (time.perf_counter() - started) / len(maps)
            rows.append(
                [
                    name,
                    f"PNG level {level}" + (" (current)" if level == 1 else ""),
                    f"{sum(sizes) / len(sizes):.0f}",
                    f"{raw}",
                    f"{ms:.2f}",
                ]
            )
        if name == "confidence":  # a coarser confidence (what thresholds actually resolve)
            for step in (4, 16):
                started = time.perf_counter()
                sizes = []
                for m in maps:
                    buffer = io.BytesIO()
                    Image.fromarray(np.ascontiguousarray((m // step) * step), mode="L").save(
                        buffer, format="PNG", compress_level=1
                    )
                    sizes.append(len(buffer.getvalue()))
                ms = 1000 * (time.perf_counter() - started) / len(maps)
                rows.append(
                    [
                        name,
                        f"quantised to {256 // step} levels, PNG level 1",
                        f"{sum(sizes) / len(sizes):.0f}",
                        f"{raw}",
                        f"{ms:.2f}",
                    ]
                )
    return rows


def throughput(fn, count: int, min_seconds: float) -> float:
    """Calls/s of fn(i) for i in 0..count-1, cycling until min_seconds have passed."""
    started, calls = time.perf_counter(), 0
    while True:
        fn(calls % count)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds and calls >= count:
            return calls / elapsed


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="teacher weights ({'model': state_dict} file); default: train round 0",
    )
    parser.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="round-0 steps when training (default: epochs x steps_per_epoch; --quick: 20)",
    )
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    min_s = 1.0 if args.quick else 3.0
    common.header("Storage: pseudo-label bytes and input pipeline throughput", args.quick)
    import numpy as np
    import torch
    from PIL import Image

    from s4al_ray.data.io import load_image
    from s4al_ray.data.training import DecodeCache, LabeledImages, PoolImages
    from s4al_ray.student import build_datasets

    cfg = common.bench_config(args.overrides, name="bench-storage")
    res, _ = common.connect(cfg)
    exp = common.experiment(cfg, res)
    # Pseudo-label sizes depend on the weights (an untrained model's confidence map is flat and
    # compresses to nothing): a round-0 student trained in-process, as many steps as round 0 has.
    steps = args.train_steps or (20 if args.quick else cfg.train.epochs * cfg.train.steps_per_epoch)
    t0 = time.perf_counter()
    checkpoint = args.checkpoint or common.train_round0(exp, steps)
    print(
        f"teacher checkpoint: {args.checkpoint or f'round-0 student, {steps} plain steps'} "
        f"({time.perf_counter() - t0:.0f}s)"
    )
    setup = common.round1_setup(exp, checkpoint)
    teacher = setup["teacher"]
    sizes = parquet_sizes(teacher.output_uri)
    h, w = teacher.rows[0]["height"], teacher.rows[0]["width"]
    print(
        common.table(
            ["figure", "bytes per image"],
            [
                ["parquet on disk (all columns)", f"{sizes['on_disk_bytes_per_image']:.0f}"],
                ["  label PNG", f"{sizes['label_png_mean']:.0f}"],
                ["  confidence PNG", f"{sizes['conf_png_mean']:.0f}"],
                *[
                    [f"  column {k} (in memory)", f"{v:.0f}"]
                    for k, v in sizes["column_bytes_per_image"].items()
                ],
                ["raw uint8 label + confidence", f"{2 * h * w}"],
            ],
            f"Teacher parquet: {sizes['images']} images {h}x{w}, {sizes['files']} files",
        )
    )
    import pyarrow.parquet as pq

    from s4al_ray import storage

    fs, path = storage.filesystem(teacher.output_uri)
    table = pq.read_table(path, filesystem=fs, columns=["label_png", "conf_png"])
    print(
        common.table(
            ["map", "encoding", "bytes/image", "raw bytes", "encode ms/image"],
            png_alternatives(
                table.column("label_png").to_pylist()[:64],
                table.column("conf_png").to_pylist()[:64],
            ),
            "Pseudo-label encodings (first 64 images)",
        )
    )

    torch.set_num_threads(1)  # decoding and augmentation, as timed here, run on one thread
    job = setup["job"]
    sets = build_datasets(job)
    labeled, pool = sets.labeled, sets.pool
    nl, npool = len(labeled), len(pool)
    if args.quick:
        npool = min(npool, 64)
    uncached_l = LabeledImages(labeled.items, DecodeCache(max_bytes=0))
    uncached_p = PoolImages(
        pool.items,
        pool.pseudo,
        list(pool.thresholds),
        pool.acquired,
        pool.region_size,
        cache=DecodeCache(max_bytes=0),
        pseudo_labels=pool.pseudo_labels,
    )
    for i in range(nl):  # warm the cache
        labeled[i]
    for i in range(npool):
        pool[i]

    def plain_labeled(i):
        item = labeled.items[i]
        with Image.open(item["image_uri"]) as img:
            np.asarray(img.convert("RGB"))
        with Image.open(item["mask_uri"]) as img:
            np.asarray(img)

    def plain_pool(i):
        item = pool.items[i]
        with Image.open(item["image_uri"]) as img:
            np.asarray(img.convert("RGB"))
        label_png, conf_png = pool.pseudo[item["sample_id"]]
        for data in (label_png, conf_png):
            with Image.open(io.BytesIO(data)) as img:
                np.asarray(img)
        if pool.acquired.get(item["sample_id"]):
            with Image.open(item["mask_uri"]) as img:
                np.asarray(img)

    def pool_decode(dataset):
        def go(i):
            item = dataset.items[i]
            dataset.cache.get(item["image_uri"], load_image)
            dataset.target(item)

        return go

    variants = {
        "LabeledImages.__getitem__, cache warm": (lambda i: labeled[i], nl),
        "LabeledImages.__getitem__, no cache": (lambda i: uncached_l[i], nl),
        "LabeledImages.load (decode only), cache warm": (labeled.load, nl),
        "LabeledImages.load (decode only), no cache": (uncached_l.load, nl),
        "plain PIL+numpy decode, image + mask": (plain_labeled, nl),
        "PoolImages.__getitem__, cache warm": (lambda i: pool[i], npool),
        "PoolImages.__getitem__, no cache": (lambda i: uncached_p[i], npool),
        "PoolImages image + target (no augment), cache warm": (pool_decode(pool), npool),
        "PoolImages image + target (no augment), no cache": (pool_decode(uncached_p), npool),
        "plain PIL+numpy decode, image + 2 PNGs (+ mask)": (plain_pool, npool),
    }
    samples = {name: common.Samples(name) for name in variants}
    for _ in range(repeat):
        for name, (fn, count) in variants.items():
            samples[name].add(throughput(fn, count, min_s))
    print(
        common.table(
            ["input pipeline (1 thread)", "images/s", "load"],
            [[k, f"{s.median:.0f}", f"{s.load:.1f}"] for k, s in samples.items()],
            f"Student input pipeline, {nl} labeled / {npool} pool images {h}x{w} "
            f"(median of {repeat})",
        )
    )
    t0 = time.perf_counter()
    from s4al_ray.data.train_inputs import read_train_inputs
    from s4al_ray.data.training import read_pseudo_labels

    read_pseudo_labels(
        job.pseudo_uri, {i["sample_id"] for i in read_train_inputs(job.inputs_uri, "pool")}
    )
    print(f"\nread_pseudo_labels (whole round's parquet): {time.perf_counter() - t0:.3f}s")
    train = job.train
    step_images = train.labeled_batch + train.pseudo_batch
    per_step = (
        train.labeled_batch / samples["LabeledImages.__getitem__, cache warm"].median
        + train.pseudo_batch / samples["PoolImages.__getitem__, cache warm"].median
    )
    print(
        f"input pipeline per training step ({step_images} images, cache warm): "
        f"{1000 * per_step:.1f} ms"
    )
    sizes.pop("sample_label"), sizes.pop("sample_conf")
    common.write_json(
        args.json,
        {
            "machine": common.machine(),
            "parquet": sizes,
            "input_images_per_s": {k: v.as_dict() for k, v in samples.items()},
            "input_ms_per_step": 1000 * per_step,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
