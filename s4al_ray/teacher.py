"""Teacher inference over the unlabeled pool with Ray Data.

Once per round, Ray Data predicts every pool image with the round's checkpoint, optionally
averaging scales and flips, and emits per image: the arg-max label and its confidence (both uint8
PNGs, so thresholds can be chosen afterwards per class without rerunning inference), per-region
acquisition scores, and a per-class confidence histogram. One parquet dataset per round; a rerun
overwrites it, never appends.

Two ways to run the model (``teacher.reuse_workers``):
- CPU (default): Ray Data *tasks*. Ray keeps task worker processes alive between passes, and each
  caches its teacher model, so a pass pays neither an actor-pool start (~4.5 s here even for a
  trivial class) nor a torch/torchvision import (~4 s per process) after the first round.
- GPU, or ``reuse_workers: false``: an *actor pool*, each actor loading the checkpoint once. Ray
  gives every GPU task a fresh process (``max_calls=1``), so tasks could not cache a GPU model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
import torch.nn.functional as F

from s4al_ray import storage
from s4al_ray.acquisition import region_scores
from s4al_ray.config import ModelConfig
from s4al_ray.data.io import encode_png, load_image
from s4al_ray.data.training import image_tensor, normalize
from s4al_ray.model import model_from_config
from s4al_ray.model.weights import load_checkpoint
from s4al_ray.pseudo_labels import LEVELS, confidence_histogram, confidence_levels
from s4al_ray.regions import RegionGrid
from s4al_ray.scores import get_score

OUTPUT_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("label_png", pa.binary()),
        ("conf_png", pa.binary()),  # uint8 confidence levels (pseudo_labels.confidence_levels)
        ("scores", pa.list_(pa.float32())),
        ("conf_hist", pa.list_(pa.int32())),  # (C * LEVELS,) pixels per predicted class and level
    ]
)


@dataclass(frozen=True)
class TeacherJob:
    """Everything one teacher pass reads, built by ``jobs.teacher_job``. Its ``repr`` keys the
    model cached in task workers, so it names the checkpoint and its storage stamp."""

    round: int
    seed: int  # random scores draw per image from (seed, sample id)
    model: ModelConfig
    num_classes: int
    checkpoint_uri: str
    checkpoint_stamp: str  # a checkpoint rewritten under the same path is reloaded
    region_size: int
    score: str  # a key of scores.SCORES
    class_weights: list[float] | None  # only when the score needs them
    scales: list[float]
    flip: bool
    use_gpu: bool
    cpus_per_worker: int
    reuse_workers: bool
    num_workers: int
    batch_size: int

    @property
    def uses_tasks(self) -> bool:
        return uses_tasks(self.reuse_workers, self.use_gpu)


@torch.no_grad()
def predict_probs(model, images: torch.Tensor, scales: list[float], flip: bool) -> torch.Tensor:
    """Softmax (B, C, H, W) averaged over scales (and horizontal flips)."""
    size = images.shape[-2:]
    total = None
    for scale in scales:
        x = (
            images
            if scale == 1.0
            else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        )
        views = [x, x.flip(-1)] if flip else [x]
        for i, view in enumerate(views):
            logits = model(normalize(view))["logits"]
            logits = logits.flip(-1) if i == 1 else logits
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            probs = torch.softmax(logits.float(), dim=1)
            total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))


class TeacherPredictor:
    """The teacher model and its per-image outputs: a Ray Data callable class (one model per
    actor, reused for every batch), also cached per task worker by ``predict_batch``."""

    def __init__(self, job: TeacherJob) -> None:
        torch.set_num_threads(job.cpus_per_worker)
        self.job = job
        self.device = torch.device("cuda" if job.use_gpu and torch.cuda.is_available() else "cpu")
        model = model_from_config(job.model, job.num_classes, pretrained="none")
        load_checkpoint(model, job.checkpoint_uri)
        self.model = model.to(self.device).eval()
        self.score = get_score(job.score)
        weights = job.class_weights
        self.class_weights = torch.tensor(weights) if weights is not None else None

    def _rows(self, batch: dict) -> list[dict]:
        keys = list(batch)
        return [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]

    def __call__(self, batch: dict) -> pa.Table:
        rows = self._rows(batch)
        images = torch.stack([image_tensor(load_image(r["image_uri"])) for r in rows])
        probs = predict_probs(
            self.model, images.to(self.device), self.job.scales, self.job.flip
        ).cpu()
        out = {name: [] for name in OUTPUT_SCHEMA.names}
        for row, p in zip(rows, probs):
            self.emit(row, p, out)
        return pa.table(out, schema=OUTPUT_SCHEMA)

    def emit(self, row: dict, probs: torch.Tensor, out: dict) -> None:
        confidence, label = probs.max(0)
        label_u8 = label.numpy().astype(np.uint8)
        level = confidence_levels(confidence.numpy())
        grid = RegionGrid(int(row["height"]), int(row["width"]), self.job.region_size)
        known = grid.mask(list(row["acquired"]))
        ctx = self.score.context(self.job.seed, str(row["sample_id"]), self.class_weights)
        score = self.score(probs, ctx)
        out["sample_id"].append(str(row["sample_id"]))
        out["label_png"].append(encode_png(label_u8))
        out["conf_png"].append(encode_png(level))
        out["scores"].append(region_scores(score.numpy(), known, grid).tolist())
        out["conf_hist"].append(confidence_histogram(label_u8, level, self.job.num_classes))


# The teacher model of the current pass in this worker process, keyed by its job (which names
# the checkpoint and its storage stamp): reused by every later batch of the same pass, replaced
# when a new round's checkpoint arrives.
_CACHED_PREDICTOR: dict[str, TeacherPredictor] = {}


def predict_batch(batch: dict, job: TeacherJob) -> pa.Table:
    """Ray Data task function: ``TeacherPredictor`` cached in this worker process."""
    key = repr(job)
    predictor = _CACHED_PREDICTOR.get(key)
    if predictor is None:
        _CACHED_PREDICTOR.clear()  # free the previous round's model first
        predictor = _CACHED_PREDICTOR[key] = TeacherPredictor(job)
    return predictor(batch)


@ray.remote(num_cpus=0)
def _load_teacher_code() -> None:
    """Nothing but this module's imports (torch, torchvision, the model): ~4 s per process."""


def warm_task_workers(count: int) -> None:
    """Start the teacher's imports in ``count`` worker processes now, in the background: Ray
    reuses task workers, so the first teacher pass finds them ready instead of importing."""
    for _ in range(count):
        _load_teacher_code.remote()


def uses_tasks(reuse_workers: bool, use_gpu: bool) -> bool:
    """Whether the teacher runs as cached-model tasks (CPU) rather than an actor pool."""
    return reuse_workers and not use_gpu


def _map_predict(ds: ray.data.Dataset, job: TeacherJob) -> ray.data.Dataset:
    resources = {"num_cpus": job.cpus_per_worker, "num_gpus": 1 if job.use_gpu else 0}
    if job.uses_tasks:
        return ds.map_batches(
            predict_batch,
            fn_kwargs={"job": job},
            batch_size=job.batch_size,
            batch_format="numpy",
            compute=ray.data.TaskPoolStrategy(size=job.num_workers),
            **resources,
        )
    return ds.map_batches(
        TeacherPredictor,
        fn_constructor_kwargs={"job": job},
        batch_size=job.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=job.num_workers),
        **resources,
    )


def size_groups(rows: list[dict]) -> list[list[dict]]:
    """Rows grouped by image size, smallest first: images of different sizes cannot share a batch
    tensor, so each group is its own pass, written to ``size_<index>/``."""
    sizes = sorted({(r["height"], r["width"]) for r in rows})
    return [[r for r in rows if (r["height"], r["width"]) == size] for size in sizes]


def run_teacher(job: TeacherJob, rows: list[dict], output_uri: str) -> float:
    """Predict ``rows`` (sample_id, image_uri, height, width, acquired) and write parquet to
    ``output_uri`` (replaced). Returns the seconds spent."""
    started = time.perf_counter()
    storage.delete_dir(output_uri)
    fs, path = storage.filesystem(output_uri)
    for index, subset in enumerate(size_groups(rows)):
        blocks = max(1, min(len(subset) // job.batch_size, 64))
        ds = _map_predict(ray.data.from_items(subset, override_num_blocks=blocks), job)
        # One sub-directory per size group: a pass never touches another's files.
        ds.write_parquet(f"{path}/size_{index:02d}", filesystem=fs)
    return time.perf_counter() - started


@dataclass(frozen=True)
class TeacherOutput:
    scores: dict[str, np.ndarray]  # sample_id -> region scores
    hist: np.ndarray  # (C, LEVELS) confidence histogram over the pool
    class_pixels: dict[str, np.ndarray]  # sample_id -> predicted pixels per class


def read_teacher_output(output_uri: str, num_classes: int) -> TeacherOutput:
    fs, path = storage.filesystem(output_uri)
    table = pq.read_table(path, filesystem=fs, columns=["sample_id", "scores", "conf_hist"])
    ids = table.column("sample_id").to_pylist()
    scores = {
        sid: np.asarray(s, dtype=np.float32)
        for sid, s in zip(ids, table.column("scores").to_pylist())
    }
    hist = table.column("conf_hist").combine_chunks()
    per_image = hist.flatten().to_numpy().astype(np.int64).reshape(len(ids), num_classes, LEVELS)
    class_pixels = {sid: counts.sum(1) for sid, counts in zip(ids, per_image)}
    return TeacherOutput(scores, per_image.sum(0), class_pixels)
