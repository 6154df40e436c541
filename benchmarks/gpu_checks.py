"""GPU checks of the scale-shaped data path (issue 16), in one process on one CUDA device.

The Cityscapes configuration (``configs/cityscapes.yaml``: DeepLabv3+ MobileNetV2, 19 classes,
688x688 images as the prepared cache holds them; ImageNet weights are not needed for speed, so
the model starts untrained) on blocky random scenes generated in memory:

1. Student: the share of a whole train step (its batch of 2 labeled + 4 pool images, bf16
   autocast as ``train.amp``) that the on-device augmentation takes (``student.augment_batches``:
   the host-to-device copy, weak and strong augmentation, CutMix). Target <= 5%.
2. Teacher: the share of the GPU actor's time (``teacher_stages.TeacherModel.__call__`` on a
   decoded batch, scales 0.5/1/2, entropy scores) spent in the model's forward passes
   (``teacher_stages.predict``). Target >= 80%.
3. Teacher images/s against the raw forward of the same model on random tensors (batch 8,
   688x688, one scale: the ceiling of one scale's pass), with the pass's own scales beside it.

CUDA work is timed with ``torch.cuda.synchronize`` around each call; figures are medians.

    .venv/bin/python benchmarks/gpu_checks.py                        # on one GPU (not yet run)
    .venv/bin/python benchmarks/gpu_checks.py --device cpu --quick   # a smoke run on a CPU
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (sets OMP_WAIT_POLICY before torch is imported)
import numpy as np  # noqa: E402
import torch  # noqa: E402

SIZE = (688, 688)
CLASSES = 19


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_s(fn, device: torch.device, repeat: int) -> float:
    values = []
    for _ in range(repeat):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        values.append(time.perf_counter() - started)
    return statistics.median(values)


def scenes(count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(688x688x3 uint8 image, 688x688 uint8 label map) pairs: 43-px blocks of 19 classes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        grid = rng.integers(0, CLASSES, (16, 16), dtype=np.uint8)
        mask = np.kron(grid, np.ones((43, 43), np.uint8))
        image = rng.integers(0, 256, (CLASSES, 3), dtype=np.uint8)[mask]
        noise = rng.integers(0, 24, image.shape, dtype=np.uint8)
        out.append((image + noise, mask))
    return out


def student_check(cfg, device: torch.device, steps: int) -> dict:
    from s4al_ray.data.training import collate_decoded
    from s4al_ray.student import StudentJob, augment_batches, init_model, make_optimizer, train_step

    train = replace(cfg.train, use_gpu=device.type == "cuda")
    job = StudentJob(
        round=1,
        seed=0,
        num_classes=CLASSES,
        crop=SIZE,
        train=train,
        model=replace(cfg.model, pretrained="none"),
        reco=cfg.reco,
        loader_workers=0,
        inputs_uri="",
        num_labeled=0,
        num_pool=0,
        run_name="gpu-checks",
        train_dir="",
        checkpoint_uri="",
        thresholds=[cfg.teacher.threshold] * CLASSES,
    )
    pin = device.type == "cuda"
    data = scenes(train.labeled_batch + train.pseudo_batch)

    def batch(part):
        images, targets, sizes = collate_decoded(part)
        return (
            (images.pin_memory(), targets.pin_memory(), sizes) if pin else (images, targets, sizes)
        )

    batch_l = batch(data[: train.labeled_batch])
    batch_u = batch(data[train.labeled_batch :])
    torch.manual_seed(0)
    model = init_model(job).to(device).train()
    optimizer = make_optimizer(model, train)
    use_amp = train.amp and device.type == "cuda"
    generator = torch.Generator().manual_seed(1)

    def step():
        train_step(model, optimizer, job, batch_l, batch_u, device, generator, use_amp=use_amp)

    def augment():
        augment_batches(job, batch_l, batch_u, device, generator)

    for _ in range(3):  # warm-up: cuDNN's algorithm search, kornia's kernels
        step()
    step_s = median_s(step, device, steps)
    aug_s = median_s(augment, device, steps)
    images = train.labeled_batch + train.pseudo_batch
    return {
        "images_per_step": images,
        "step_s": step_s,
        "augmentation_s": aug_s,
        "augmentation_share": aug_s / step_s,
        "train_images_per_s": images / step_s,
    }


def teacher_check(cfg, device: torch.device, batches: int) -> dict:
    from s4al_ray.data.training import normalize
    from s4al_ray.model import model_from_config
    from s4al_ray.teacher_stages import TeacherJob, TeacherModel, predict

    t = cfg.teacher
    model_cfg = replace(cfg.model, pretrained="none")
    checkpoint = os.path.join(tempfile.mkdtemp(prefix="s4al-gpu-"), "model.pt")
    torch.manual_seed(0)
    torch.save({"model": model_from_config(model_cfg, CLASSES, "none").state_dict()}, checkpoint)
    job = TeacherJob(
        round=1,
        seed=0,
        model=model_cfg,
        num_classes=CLASSES,
        checkpoint_uri=checkpoint,
        checkpoint_stamp="",
        region_size=cfg.acquisition.region_size,
        score="entropy",
        class_weights=None,
        scales=list(t.scales),
        flip=t.flip,
        use_gpu=device.type == "cuda",
        cpus_per_worker=t.cpus_per_actor,
        reuse_workers=True,
        num_workers=1,
        batch_size=t.batch_size,
    )
    stage = TeacherModel(job)
    pairs = scenes(t.batch_size, seed=1)
    decoded = {
        "sample_id": np.asarray([f"s{k}" for k in range(len(pairs))]),
        "pool_index": np.arange(len(pairs)),
        "height": np.full(len(pairs), SIZE[0]),
        "width": np.full(len(pairs), SIZE[1]),
        "acquired": np.empty(len(pairs), dtype=object),
        "image": np.stack([image for image, _ in pairs]),
    }
    decoded["acquired"][:] = [[] for _ in pairs]
    images = torch.from_numpy(decoded["image"]).to(device).permute(0, 3, 1, 2).float() / 255.0
    random = torch.rand(t.batch_size, 3, *SIZE, device=device)

    def forward_only():
        predict(stage.model, images, job.scales, job.flip)

    def raw():
        with torch.no_grad():
            stage.model(normalize(random))

    for fn in (lambda: stage(decoded), forward_only, raw):
        fn()  # warm-up
    call_s = median_s(lambda: stage(decoded), device, batches)
    forward_s = median_s(forward_only, device, batches)
    raw_s = median_s(raw, device, batches)
    n = t.batch_size
    return {
        "batch": n,
        "scales": job.scales,
        "actor_call_s": call_s,
        "forward_s": forward_s,
        "forward_share": forward_s / call_s,
        "teacher_images_per_s": n / call_s,
        "raw_forward_images_per_s": n / raw_s,
        "raw_forward_passes_per_image": len(job.scales) * (2 if job.flip else 1),
    }


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke run)")
    parser.add_argument("--config", default=os.path.join(common.ROOT, "configs", "cityscapes.yaml"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_checks: no CUDA device here; use --device cpu for a smoke run")
        return 2
    device = torch.device(args.device)
    repeat = args.repeat or (2 if args.quick else 10)
    common.header("GPU checks: augmentation share, teacher forward share, images/s", args.quick)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}")
    from s4al_ray.config import load_config

    cfg = load_config(args.config, args.overrides)
    student = student_check(cfg, device, repeat)
    teacher = teacher_check(cfg, device, repeat)
    rows = [
        ["student step (2 labeled + 4 pool, 688x688)", f"{1000 * student['step_s']:.1f} ms", ""],
        [
            "on-device augmentation in it",
            f"{1000 * student['augmentation_s']:.1f} ms",
            f"{100 * student['augmentation_share']:.1f}% of the step (target <= 5%)",
        ],
        [
            f"teacher actor call (batch {teacher['batch']}, scales {teacher['scales']})",
            f"{1000 * teacher['actor_call_s']:.1f} ms",
            f"{teacher['teacher_images_per_s']:.1f} images/s",
        ],
        [
            "forward passes in it",
            f"{1000 * teacher['forward_s']:.1f} ms",
            f"{100 * teacher['forward_share']:.1f}% of the call (target >= 80%)",
        ],
        [
            "raw forward, random tensors, one scale",
            "",
            f"{teacher['raw_forward_images_per_s']:.1f} images/s "
            f"({teacher['raw_forward_passes_per_image']} passes per teacher image)",
        ],
    ]
    print(common.table(["part", "median", "figure"], rows, f"{device} (median of {repeat})"))
    common.write_json(
        args.json,
        {
            "machine": common.machine(),
            "device": str(device),
            "student": student,
            "teacher": teacher,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
