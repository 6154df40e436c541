"""Scoring a checkpoint on a split with Ray Data: ``python run.py evaluate`` and the last round's
test score.

The split's images flow through read + decode (CPU tasks) -> the model (cached-model CPU tasks,
or a GPU actor pool that grows with the cluster, sized as the teacher's) -> the driver, which sums
per-image confusion matrices (sums, never averaged mIoUs) and keeps the label maps of the images
asked for. The forward is the student's validation forward (``evaluate.predict_labels``): the
same checkpoint gets the same confusion matrix as the round record.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field

import numpy as np
import ray
import torch

from s4al_ray import storage
from s4al_ray.config import ModelConfig
from s4al_ray.data.io import encode_png, load_image, load_mask
from s4al_ray.data.training import image_tensor
from s4al_ray.evaluate import (
    confusion_matrix,
    mean_iou,
    pixel_accuracy,
    predict_labels,
    split_fields,
)
from s4al_ray.progress import post_images
from s4al_ray.storage import check_node_access
from s4al_ray.teacher import size_groups
from s4al_ray.teacher_stages import cached_in_worker, load_pass_model, model_stage


@dataclass(frozen=True)
class ScoringJob:
    """Everything one scoring pass reads; its ``repr`` keys the model cached in task workers."""

    model: ModelConfig
    num_classes: int
    checkpoint_uri: str
    checkpoint_stamp: str  # a checkpoint rewritten under the same path is reloaded
    use_gpu: bool
    cpus_per_worker: int
    uses_tasks: bool  # cached-model CPU tasks; else an actor pool
    num_workers: int  # tasks, or the actor pool's largest size
    batch_size: int
    min_workers: int = 0  # the actor pool's smallest size; 0 = num_workers
    predictions: tuple[str, ...] = ()  # sample ids whose predicted label maps come back


def decode_scored(batch: dict) -> dict:
    """Stage 1: the batch's images (B, H, W, 3) and ground-truth masks (B, H, W)."""
    if len(batch["image_uri"]):
        check_node_access(str(batch["image_uri"][0]))
    return {
        "sample_id": batch["sample_id"],
        "image": np.stack([load_image(str(uri)) for uri in batch["image_uri"]]),
        "mask": np.stack([load_mask(str(uri)) for uri in batch["mask_uri"]]),
    }


class ScoringModel:
    """Stage 2: the checkpoint, loaded once per actor (or per task process)."""

    def __init__(self, job: ScoringJob) -> None:
        self.job = job
        self.model, self.device = load_pass_model(job)
        self.keep = set(job.predictions)

    def __call__(self, batch: dict) -> dict:
        images = torch.stack([image_tensor(image) for image in batch["image"]])
        labels = predict_labels(self.model, images, self.device)
        masks = torch.from_numpy(batch["mask"].astype(np.int64))
        confusion = [
            confusion_matrix(p, m, self.job.num_classes).flatten().numpy()
            for p, m in zip(labels, masks)
        ]
        pngs = np.empty(len(labels), dtype=object)
        pngs[:] = [
            encode_png(p.numpy().astype(np.uint8)) if str(s) in self.keep else b""
            for s, p in zip(batch["sample_id"], labels)
        ]
        return {"sample_id": batch["sample_id"], "confusion": np.stack(confusion), "label": pngs}


def score_batch(batch: dict, job: ScoringJob) -> dict:
    """Stage 2 as a Ray Data task function: ``ScoringModel`` cached in this worker process."""
    return cached_in_worker(job, ScoringModel)(batch)


@dataclass
class SplitScore:
    confusion: np.ndarray  # (C, C) int64, rows = ground truth
    # Per image: (sample_id, pixel accuracy, mIoU), in the order the pass finished them.
    images: list[tuple[str, float, float]] = field(default_factory=list)
    labels: dict[str, bytes] = field(default_factory=dict)  # sample_id -> label-map PNG
    seconds: float = 0.0

    def fields(self, split: str, classes: list[str]) -> dict:
        """``<split>/miou``, ``<split>/pixel_acc``, ``<split>/iou/<class>``: the record's names."""
        return split_fields(split, self.confusion, classes)


def score_split(job: ScoringJob, rows: list[dict], progress=None) -> SplitScore:
    """Score ``job``'s checkpoint on ``rows`` (sample_id, image_uri, mask_uri, height, width);
    images done are posted to ``progress`` (a ``progress.StageProgress`` queue)."""
    started = time.perf_counter()
    c = job.num_classes
    score = SplitScore(np.zeros((c, c), dtype=np.int64))
    for group in size_groups(rows):  # one tensor size per pass
        columns = [{k: r[k] for k in ("sample_id", "image_uri", "mask_uri")} for r in group]
        blocks = max(1, min(len(columns) // job.batch_size, 64))
        ds = ray.data.from_items(columns, override_num_blocks=blocks)
        ds = ds.map_batches(
            decode_scored, batch_size=job.batch_size, batch_format="numpy", num_cpus=1
        )
        ds = model_stage(ds, job, score_batch, ScoringModel)
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            for sample_id, flat, png in zip(batch["sample_id"], batch["confusion"], batch["label"]):
                confusion = np.asarray(flat, np.int64).reshape(c, c)
                score.confusion += confusion
                score.images.append(
                    (str(sample_id), pixel_accuracy(confusion), mean_iou(confusion))
                )
                if png:
                    score.labels[str(sample_id)] = bytes(png)
            post_images(progress, len(batch["sample_id"]))
    score.seconds = time.perf_counter() - started
    return score


def write_score(
    folder: str,
    score: SplitScore,
    split: str,
    checkpoint: str,
    classes: list[str],
    colors: list[tuple[int, int, int]],
) -> None:
    """``folder``/scores.json (mIoU, per-class IoU, confusion), images.csv (per image, worst
    first), confusion.png, predictions/<sample_id>.png (palette PNGs: the pixel values are class
    ids, shown in the dataset's colours)."""
    from s4al_ray.report_figures import confusion_figure, palette_png

    fields = score.fields(split, classes)
    summary = {
        "split": split,
        "checkpoint": checkpoint,
        "images": len(score.images),
        "miou": fields[f"{split}/miou"],
        "pixel_acc": fields[f"{split}/pixel_acc"],
        "iou": {c: fields[f"{split}/iou/{c}"] for c in classes},
        "classes": classes,
        "confusion": score.confusion.tolist(),
        "seconds": score.seconds,
    }
    storage.write_text(storage.join(folder, "scores.json"), json.dumps(summary, indent=1))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["sample_id", "pixel_acc", "miou"])
    worst_first = sorted(score.images, key=lambda row: (np.nan_to_num(row[2], nan=2.0), row[0]))
    writer.writerows([s, f"{a:.4f}", f"{m:.4f}"] for s, a, m in worst_first)
    storage.write_text(storage.join(folder, "images.csv"), buffer.getvalue())
    storage.write_bytes(
        storage.join(folder, "confusion.png"), confusion_figure(score.confusion, classes)
    )
    for sample_id, png in score.labels.items():
        name = sample_id.replace("/", "__") + ".png"
        storage.write_bytes(storage.join(folder, "predictions", name), palette_png(png, colors))


def score_to_folder(
    job: ScoringJob, rows: list[dict], split: str, folder: str, data, log, prefix: str
) -> SplitScore:
    """``score_split`` with its progress drawn under ``prefix``, then ``write_score`` into
    ``folder``: the ``evaluate`` command and the last round's test score."""
    from s4al_ray.progress import StageProgress
    from s4al_ray.report_figures import class_colors

    with StageProgress(prefix, len(rows), "images", log) as queue:
        score = score_split(job, rows, queue)
    write_score(folder, score, split, job.checkpoint_uri, data.classes, class_colors(data))
    return score
