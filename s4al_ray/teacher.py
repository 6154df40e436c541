"""Teacher inference over the unlabeled pool: a streaming Ray Data pipeline of separate stages.

Once per round the pool flows through read + decode (CPU tasks) -> the model (a GPU actor pool
that can grow with the cluster, or CPU tasks) -> post-process (CPU tasks) -> parquet, each stage
sized on its own (``teacher_stages.py`` has the stages). Per image it stores the arg-max label
and its confidence (uint8 PNGs, so thresholds can be chosen afterwards per class without rerunning
inference), region scores, predicted class pixels, and the block's acquisition candidates; per
block, its confidence histogram. One parquet dataset per round; a rerun overwrites it.

Two ways to run the model (``teacher.reuse_workers``):
- CPU (default): Ray Data *tasks*. Ray keeps task worker processes alive between passes, and each
  caches its teacher model, so a pass pays neither an actor-pool start (~4.5 s here even for a
  trivial class) nor a torch/torchvision import (~4 s per process) after the first round.
- GPU, or ``reuse_workers: false``: an *actor pool* of ``min_workers``..``max_workers`` actors,
  each loading the checkpoint once; on an autoscaling cluster Ray Data asks for more GPU nodes
  while the pass runs. Ray gives every GPU task a fresh process, so tasks could not cache a model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow.dataset as pads
import ray

from s4al_ray import storage
from s4al_ray.acquisition import CandidateReducer, Candidates
from s4al_ray.pseudo_labels import LEVELS
from s4al_ray.teacher_stages import (
    OUTPUT_SCHEMA,
    TeacherJob,
    TeacherModel,
    decode_images,
    model_batch,
    predict_probs,
    summarize_batch,
    uses_tasks,
)

__all__ = [
    "OUTPUT_SCHEMA",
    "TeacherJob",
    "TeacherOutput",
    "predict_probs",
    "run_teacher",
    "uses_tasks",
]


@ray.remote(num_cpus=0)
def _load_teacher_code() -> None:
    """Nothing but this module's imports (torch, torchvision, the model): ~4 s per process."""


def warm_task_workers(count: int) -> None:
    """Start the teacher's imports in ``count`` worker processes now, in the background: Ray
    reuses task workers, so the first teacher pass finds them ready instead of importing."""
    for _ in range(count):
        _load_teacher_code.remote()


def _model_stage(ds: ray.data.Dataset, job: TeacherJob) -> ray.data.Dataset:
    resources = {"num_cpus": job.cpus_per_worker, "num_gpus": 1 if job.use_gpu else 0}
    common = {"batch_size": job.batch_size, "batch_format": "numpy", **resources}
    if job.uses_tasks:
        return ds.map_batches(
            model_batch,
            fn_kwargs={"job": job},
            compute=ray.data.TaskPoolStrategy(size=job.num_workers),
            **common,
        )
    smallest = job.min_workers or job.num_workers
    return ds.map_batches(
        TeacherModel,
        fn_constructor_kwargs={"job": job},
        compute=ray.data.ActorPoolStrategy(min_size=smallest, max_size=job.num_workers),
        **common,
    )


def _pipeline(rows: list[dict], job: TeacherJob) -> ray.data.Dataset:
    blocks = max(1, min(len(rows) // job.batch_size, 64))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(decode_images, batch_size=job.batch_size, batch_format="numpy", num_cpus=1)
    ds = _model_stage(ds, job)
    return ds.map_batches(
        summarize_batch,
        fn_kwargs={"job": job},
        batch_size=job.batch_size,
        batch_format="numpy",
        num_cpus=1,
    )


def size_groups(rows: list[dict]) -> list[list[dict]]:
    """Rows grouped by image size, smallest first: images of different sizes cannot share a batch
    tensor, so each group is its own pass, written to ``size_<index>/``."""
    sizes = sorted({(r["height"], r["width"]) for r in rows})
    return [[r for r in rows if (r["height"], r["width"]) == size] for size in sizes]


def run_teacher(job: TeacherJob, rows: list[dict], output_uri: str) -> float:
    """Predict ``rows`` (sample_id, pool_index, image_uri, height, width, acquired) and write
    parquet to ``output_uri`` (replaced). Returns the seconds spent."""
    started = time.perf_counter()
    storage.delete_dir(output_uri)
    fs, path = storage.filesystem(output_uri)
    for index, subset in enumerate(size_groups(rows)):
        # One sub-directory per size group: a pass never touches another's files.
        _pipeline(subset, job).write_parquet(f"{path}/size_{index:02d}", filesystem=fs)
    return time.perf_counter() - started


@dataclass(frozen=True)
class TeacherOutput:
    candidates: Candidates  # every block's acquisition candidates, merged
    hist: np.ndarray  # (C, LEVELS) confidence histogram over the pool
    class_pixels: dict[str, np.ndarray]  # sample_id -> predicted pixels per class


def read_teacher_output(output_uri: str, num_classes: int, job: TeacherJob) -> TeacherOutput:
    """What the driver needs of a pass, read batch by batch: the candidates (merged and cut back
    as they stream in, so the driver holds at most what the budget could take), the pool
    histogram and per-image class pixels (never the label maps or every region's score)."""
    fs, path = storage.filesystem(output_uri)
    columns = [
        "sample_id",
        "pool_index",
        "class_pixels",
        "cand_regions",
        "cand_scores",
        "cand_areas",
        "block_hist",
    ]
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    hist = np.zeros(num_classes * LEVELS, dtype=np.int64)
    reducer = CandidateReducer(mode=job.mode, budget_pixels=job.budget_pixels, top_k=job.top_k)
    class_pixels = {}
    for batch in dataset.to_batches(columns=columns):
        ids = batch.column("sample_id").to_pylist()
        counts = batch.column("class_pixels").to_pylist()
        class_pixels.update({s: np.asarray(c, np.int64) for s, c in zip(ids, counts)})
        for block in batch.column("block_hist").to_pylist():
            if block:
                hist += np.asarray(block, np.int64)
        regions = batch.column("cand_regions")
        lengths = regions.value_lengths().to_numpy(zero_copy_only=False)
        reducer.add(
            Candidates(
                np.repeat(batch.column("pool_index").to_numpy(), lengths),
                regions.flatten().to_numpy().astype(np.int64),
                batch.column("cand_scores").flatten().to_numpy().astype(np.float32),
                batch.column("cand_areas").flatten().to_numpy().astype(np.int64),
            )
        )
    return TeacherOutput(reducer.result(), hist.reshape(num_classes, LEVELS), class_pixels)
