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
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray

from s4al_ray import storage
from s4al_ray.acquisition import Candidates
from s4al_ray.acquisition_cutoff import CandidateHistogram, Cutoff, HistogramSum
from s4al_ray.acquisition_diversity import EMBED_DIM
from s4al_ray.pseudo_labels import LEVELS
from s4al_ray.teacher_stages import (
    OUTPUT_SCHEMA,
    TeacherJob,
    TeacherModel,
    decode_images,
    embedded_segments,
    model_batch,
    model_stage,
    needs_truth,
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
def _load_teacher_code() -> list[str]:
    """Import the teacher's stages (torch, torchvision, the model: ~5 s per process on a slow
    VM) and return which of them the worker now holds. The import must be in the body: Ray ships
    a remote function by value, so a worker runs an empty one without importing this module
    (it did, and the first pass imported everything again, ~9 s of a 20 s pass)."""
    import sys

    import s4al_ray.teacher_stages  # noqa: F401

    return [
        name for name in ("torch", "torchvision", "s4al_ray.teacher_stages") if name in sys.modules
    ]


def warm_task_workers(count: int) -> list[ray.ObjectRef]:
    """Start the teacher's imports in ``count`` worker processes now, in the background: Ray
    reuses task workers, so the first teacher pass finds them ready instead of importing.
    Returns the tasks' refs (the modules each worker loaded); nobody needs to wait on them."""
    return [_load_teacher_code.remote() for _ in range(count)]


def _pipeline(rows: list[dict], job: TeacherJob, progress=None) -> ray.data.Dataset:
    blocks = max(1, min(len(rows) // job.batch_size, 64))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(
        decode_images,
        fn_kwargs={"with_truth": needs_truth(job), "segments": embedded_segments(job)},
        batch_size=job.batch_size,
        batch_format="numpy",
        num_cpus=1,
    )
    ds = model_stage(ds, job, model_batch, TeacherModel)
    return ds.map_batches(
        summarize_batch,
        fn_kwargs={"job": job, "progress": progress},
        batch_size=job.batch_size,
        batch_format="numpy",
        num_cpus=1,
    )


def size_groups(rows: list[dict]) -> list[list[dict]]:
    """Rows grouped by image size, smallest first: images of different sizes cannot share a batch
    tensor, so each group is its own pass, written to ``size_<index>/``."""
    sizes = sorted({(r["height"], r["width"]) for r in rows})
    return [[r for r in rows if (r["height"], r["width"]) == size] for size in sizes]


def run_teacher(job: TeacherJob, rows: list[dict], output_uri: str, progress=None) -> float:
    """Predict ``rows`` (sample_id, pool_index, image_uri, height, width, acquired) and write
    parquet to ``output_uri`` (replaced); images done are posted to ``progress`` (a
    ``progress.StageProgress`` queue). Returns the seconds spent."""
    started = time.perf_counter()
    storage.delete_dir(output_uri)
    fs, path = storage.filesystem(output_uri)
    for index, subset in enumerate(size_groups(rows)):
        # One sub-directory per size group: a pass never touches another's files.
        _pipeline(subset, job, progress).write_parquet(f"{path}/size_{index:02d}", filesystem=fs)
    return time.perf_counter() - started


@dataclass(frozen=True)
class TeacherOutput:
    candidates: Candidates  # the candidates the round's selection could take, merged
    hist: np.ndarray  # (C, LEVELS) confidence histogram over the pool
    class_pixels: dict[str, np.ndarray]  # sample_id -> predicted pixels per class
    nodes: dict[str, int] = field(default_factory=dict)  # Ray node id -> images its model ran


_SUMMARY_COLUMNS = [
    "sample_id",
    "class_pixels",
    "block_hist",
    "cand_hist_keys",
    "cand_hist_counts",
    "node_id",
]
_CANDIDATE_COLUMNS = [
    "pool_index",
    "cand_regions",
    "cand_scores",
    "cand_areas",
    "cand_groups",
    "cand_embedding",
]
# Above this many candidates the cut-off is applied by Ray Data tasks where the files are, not
# by the driver reading them all (a 10^6-image pool holds ~5 * 10^8 at 1% a round).
LOCAL_FILTER_MAX = 1 << 22


def read_teacher_output(
    output_uri: str, num_classes: int, job: TeacherJob, filter_in_tasks: bool | None = None
) -> TeacherOutput:
    """What the driver needs of a pass, never the label maps or every region's score: the pool
    histogram and per-image class pixels, read batch by batch; then the candidates that pass the
    cut-off the blocks' candidate histograms give (``acquisition_cutoff``): about what the
    budget can take, plus the regions of the score bin it ends in. ``filter_in_tasks``: cut in
    Ray Data tasks (default: when there are more than ``LOCAL_FILTER_MAX`` candidates)."""
    fs, path = storage.filesystem(output_uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    hist = np.zeros(num_classes * LEVELS, dtype=np.int64)
    counted, class_pixels, nodes = HistogramSum(), {}, Counter()
    written_by_this_version = "cand_hist_keys" in dataset.schema.names
    # Passes written before class-balanced selection have no groups: one group, as then.
    candidate_columns = [c for c in _CANDIDATE_COLUMNS if c in dataset.schema.names]
    summary_columns = [c for c in _SUMMARY_COLUMNS if c in dataset.schema.names]
    for batch in dataset.to_batches(columns=summary_columns):
        ids = batch.column("sample_id").to_pylist()
        counts = batch.column("class_pixels").to_pylist()
        class_pixels.update({s: np.asarray(c, np.int64) for s, c in zip(ids, counts)})
        for block in batch.column("block_hist").to_pylist():
            if block:
                hist += np.asarray(block, np.int64)
        if "node_id" in summary_columns:  # counted in arrow: a pool can hold 10^6 rows
            for pair in pc.value_counts(batch.column("node_id")).to_pylist():
                nodes[pair["values"]] += pair["counts"]
        if written_by_this_version:
            keys, regions = batch.column("cand_hist_keys"), batch.column("cand_hist_counts")
            counted.add(CandidateHistogram(keys.flatten().to_numpy(), regions.flatten().to_numpy()))
    candidate_hist = counted.result()
    embedded = job.embed_regions and "cand_embedding" in dataset.schema.names
    # A pass of an s4al-ray before the histograms (resumed): every candidate is read, as then.
    cutoff = candidate_hist.cutoff(job.budget_pixels) if written_by_this_version else None
    if filter_in_tasks is None:
        filter_in_tasks = candidate_hist.regions > LOCAL_FILTER_MAX
    if filter_in_tasks:
        files = ray.data.read_parquet(dataset.files, filesystem=fs, columns=candidate_columns)
        kept = files.map_batches(
            _kept_candidates,
            fn_kwargs={"cutoff": cutoff, "embedded": embedded},
            batch_format="pyarrow",
            num_cpus=1,
        ).iter_batches(batch_format="pyarrow", batch_size=None)
    else:
        kept = (
            _kept_candidates(batch, cutoff, embedded)
            for batch in dataset.to_batches(columns=candidate_columns)
        )
    candidates = Candidates.concat([_from_table(table) for table in kept])
    return TeacherOutput(
        candidates, hist.reshape(num_classes, LEVELS), class_pixels, dict(sorted(nodes.items()))
    )


def _kept_candidates(batch, cutoff: Cutoff | None, embedded: bool = False) -> pa.Table:
    """The candidates of these rows that pass ``cutoff`` (all with None), one row per region;
    ``embedded``: the pass wrote region embeddings (diverse selection)."""

    def flat(name: str, dtype) -> np.ndarray:  # a list column's values, of any batch type
        return pc.list_flatten(batch.column(name)).to_numpy().astype(dtype)

    lengths = pc.list_value_length(batch.column("cand_regions")).to_numpy()
    regions = flat("cand_regions", np.int64)
    # Ranked selection writes no groups (empty lists): every region is in group 0.
    groups = flat("cand_groups", np.int16) if "cand_groups" in batch.column_names else None
    # Only diverse selection writes embeddings (EMBED_DIM values a region, else empty lists).
    vectors = flat("cand_embedding", np.float16) if embedded else None
    if vectors is not None and vectors.size != regions.size * EMBED_DIM:
        raise ValueError(
            f"teacher pass: {vectors.size} embedding values for {regions.size} candidates of "
            f"{EMBED_DIM} each; delete its teacher/round_XXX/ folder to recompute it"
        )
    vectors = None if vectors is None else vectors.reshape(-1, EMBED_DIM)
    c = Candidates(
        np.repeat(np.asarray(batch.column("pool_index")), lengths),
        regions,
        flat("cand_scores", np.float32),
        flat("cand_areas", np.int64),
        groups if groups is not None and groups.size == regions.size else None,
        vectors,
    )
    c = c if cutoff is None else cutoff.keep(c)
    # One schema for every block: the group column is always there, the embedding column
    # whenever the pass wrote embeddings.
    table = {f: getattr(c, f if f != "group" else "groups") for f in Candidates.FIELDS}
    if embedded:
        vectors = np.zeros((0, EMBED_DIM), np.float16) if c.embedding is None else c.embedding
        table["embedding"] = pa.FixedSizeListArray.from_arrays(vectors.reshape(-1), EMBED_DIM)
    return pa.table(table)


def _from_table(table: pa.Table) -> Candidates:
    """``_kept_candidates``'s rows back as ``Candidates``."""
    columns = [table.column(f).to_numpy() for f in Candidates.FIELDS]
    if "embedding" not in table.column_names:
        return Candidates(*columns)
    flat = pc.list_flatten(table.column("embedding")).to_numpy()
    return Candidates(*columns, flat.astype(np.float16).reshape(-1, EMBED_DIM))
