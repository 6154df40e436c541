"""The teacher pass's three stages, each sized on its own in the Ray Data pipeline (``teacher.py``).

1. ``decode_images`` (CPU tasks): read and decode the pool images of a batch.
2. The model: ``TeacherModel``, a callable class for a GPU actor pool, or ``model_batch``, a
   task function that caches the model per CPU worker process. It returns only what the CPU
   needs next: the arg-max label and confidence level (uint8) and the acquisition score per pixel.
   The model stage does no PNG encoding or bookkeeping: its accelerator would wait for the CPU.
3. ``summarize_batch`` (CPU tasks): PNG encoding, region scores, class pixels, the block's
   confidence histogram and its acquisition candidates (``acquisition.block_candidates``): the
   regions of this block that the round's selection could take, and their histogram
   (``acquisition_cutoff``), from which the driver finds the cut-off that keeps only about the
   budget's worth of candidates: it never ranks the whole pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
import torch
import torch.nn.functional as F
from ray.util.queue import Queue

from s4al_ray.acquisition import block_candidates, region_groups, region_scores
from s4al_ray.acquisition_cutoff import CandidateHistogram
from s4al_ray.config import ModelConfig
from s4al_ray.data.io import encode_png, load_image, load_mask
from s4al_ray.data.training import normalize
from s4al_ray.model import model_from_config
from s4al_ray.model.weights import load_checkpoint
from s4al_ray.progress import post_images
from s4al_ray.pseudo_labels import confidence_histogram, confidence_levels
from s4al_ray.region_embeddings import region_embeddings, segment_embeddings
from s4al_ray.region_maps import RegionMaps
from s4al_ray.scores import get_score
from s4al_ray.storage import check_node_access


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
    num_workers: int  # model workers (tasks), or the actor pool's largest size
    batch_size: int
    # What each block's acquisition candidates must cover (see acquisition.block_candidates).
    budget_pixels: int = 0
    mode: str = "budget"
    top_k: int = 4
    exclude_border: bool = False
    min_workers: int = 0  # the actor pool's smallest size; 0 = num_workers (a fixed pool)
    # Class-balanced selection: each class's rarity rank (acquisition.class_rarity_ranks), from
    # which the blocks put each candidate region in its class group; None = ranked selection.
    rarity_ranks: list[int] | None = None
    # Diverse selection: the model stage also returns each region's embedding.
    embed_regions: bool = False
    # Superpixel regions (acquisition.regions=slic); None: squares of region_size.
    regions: RegionMaps | None = None

    @property
    def maps(self) -> RegionMaps:
        return self.regions or RegionMaps("squares", self.region_size)

    @property
    def uses_tasks(self) -> bool:
        return uses_tasks(self.reuse_workers, self.use_gpu)


def uses_tasks(reuse_workers: bool, use_gpu: bool) -> bool:
    """Whether the teacher runs as cached-model tasks (CPU) rather than an actor pool."""
    return reuse_workers and not use_gpu


OUTPUT_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("pool_index", pa.int64()),  # position in the sorted pool ids (the selection's tie-break)
        ("label_png", pa.binary()),
        ("conf_png", pa.binary()),  # uint8 confidence levels (pseudo_labels.confidence_levels)
        ("scores", pa.list_(pa.float32())),  # every region's score (kept for analysis)
        ("class_pixels", pa.list_(pa.int64())),  # predicted pixels per class
        # The block's acquisition candidates that fall in this image (regions, scores, areas).
        ("cand_regions", pa.list_(pa.int32())),
        ("cand_scores", pa.list_(pa.float32())),
        ("cand_areas", pa.list_(pa.int32())),
        ("cand_groups", pa.list_(pa.int16())),  # class-balanced selection only (else empty)
        # diverse selection only (else empty): the candidates' EMBED_DIM-float region embeddings
        ("cand_embedding", pa.list_(pa.float16())),
        # (C * LEVELS,) confidence histogram of the whole block, on its first row only (empty
        # elsewhere): the pool's histogram is the sum, and storage stays O(blocks), not O(pool).
        ("block_hist", pa.list_(pa.int64())),
        # The block's candidates per (score bin, area) (acquisition_cutoff.CandidateHistogram),
        # on its first row only, like block_hist.
        ("cand_hist_keys", pa.list_(pa.int64())),
        ("cand_hist_counts", pa.list_(pa.int64())),
        # The Ray node the model ran on (the round record says where each pass's work went).
        ("node_id", pa.string()),
    ]
)


def decode_images(
    batch: dict, with_truth: bool = False, segments: RegionMaps | None = None
) -> dict:
    """Stage 1: the batch's images as one (B, H, W, 3) uint8 array (one size per pass); with
    ``with_truth`` (a score that needs the ground truth) also their label maps, and with
    ``segments`` (superpixels the model stage embeds) their segment maps."""
    if len(batch["image_uri"]):
        check_node_access(str(batch["image_uri"][0]))
    out = {**batch, "image": np.stack([load_image(str(uri)) for uri in batch["image_uri"]])}
    if with_truth:
        out["truth"] = np.stack([load_mask(str(uri)) for uri in batch["mask_uri"]])
    if segments is not None:
        shapes = zip(map(str, batch["sample_id"]), batch["height"], batch["width"])
        out["segments"] = np.stack([segments.of(*shape).segments for shape in shapes])
    return out


@torch.no_grad()
def predict_probs(model, images: torch.Tensor, scales: list[float], flip: bool) -> torch.Tensor:
    """Softmax (B, C, H, W) averaged over scales (and horizontal flips)."""
    return predict(model, images, scales, flip)[0]


@torch.no_grad()
def predict(
    model, images: torch.Tensor, scales: list[float], flip: bool, with_embedding: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``predict_probs``, and with ``with_embedding`` the representation head's output of the
    unflipped view at the scale nearest 1 (the same forward: no extra pass)."""
    size = images.shape[-2:]
    total = embedding = None
    embed_at = min(scales, key=lambda s: abs(s - 1.0)) if with_embedding else None
    for scale in scales:
        x = (
            images
            if scale == 1.0
            else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        )
        views = [x, x.flip(-1)] if flip else [x]
        for i, view in enumerate(views):
            embed = scale == embed_at and i == 0 and embedding is None
            out = model(normalize(view), with_embedding=embed)
            embedding = out.get("embedding", embedding)
            logits = out["logits"]
            logits = logits.flip(-1) if i == 1 else logits
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            probs = torch.softmax(logits.float(), dim=1)
            total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1)), embedding


def load_pass_model(job) -> tuple[torch.nn.Module, torch.device]:
    """A pass's model stage set-up (the teacher's, or ``scoring``'s): its CPU threads, its
    device, and ``job.checkpoint_uri`` loaded in eval mode (a node without access fails by
    name)."""
    torch.set_num_threads(job.cpus_per_worker)
    device = torch.device("cuda" if job.use_gpu and torch.cuda.is_available() else "cpu")
    model = model_from_config(job.model, job.num_classes, pretrained="none")
    check_node_access(job.checkpoint_uri)
    load_checkpoint(model, job.checkpoint_uri)
    return model.to(device).eval(), device


class TeacherModel:
    """Stage 2: the round's student as teacher, loaded once per actor (or per task process)."""

    def __init__(self, job: TeacherJob) -> None:
        self.job = job
        self.model, self.device = load_pass_model(job)
        self.score = get_score(job.score)
        weights = job.class_weights
        self.class_weights = None if weights is None else torch.tensor(weights).to(self.device)
        self.node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""

    def __call__(self, batch: dict) -> dict:
        images = torch.from_numpy(np.ascontiguousarray(batch["image"])).to(self.device)
        images = images.permute(0, 3, 1, 2).float().div_(255.0)
        job = self.job
        probs, embedding = predict(self.model, images, job.scales, job.flip, job.embed_regions)
        confidence, label = probs.max(1)
        scores = []
        truths = batch.get("truth")  # only for a score that needs the ground truth
        for i, (sample_id, p) in enumerate(zip(batch["sample_id"], probs)):
            truth = None if truths is None else torch.from_numpy(np.array(truths[i]))
            ctx = self.score.context(self.job.seed, str(sample_id), self.class_weights, truth)
            scores.append(self.score(p, ctx).float().cpu())
        out = {k: batch[k] for k in ("sample_id", "pool_index", "height", "width", "acquired")}
        out["label"] = label.to(torch.uint8).cpu().numpy()
        out["level"] = confidence_levels(confidence.cpu().numpy())
        out["score"] = torch.stack(scores).numpy()
        out["node_id"] = np.full(len(scores), self.node_id)
        if embedding is not None and "segments" in batch:
            out["region_embedding"] = segment_embeddings(embedding, batch["segments"])
        elif embedding is not None:
            out["region_embedding"] = region_embeddings(
                embedding, images.shape[-2:], job.region_size
            )
        return out


# The model of the current pass in this worker process, keyed by its job (which names the
# checkpoint and its storage stamp): reused by every later batch of the same pass, replaced when
# another pass's job arrives (a new round's teacher, or ``scoring``'s model).
_CACHED_MODEL: dict[str, object] = {}


def cached_in_worker(job, build):
    """``build(job)``, made once per worker process and job: Ray reuses CPU task workers."""
    key = repr(job)
    model = _CACHED_MODEL.get(key)
    if model is None:
        _CACHED_MODEL.clear()  # free the previous pass's model first
        model = _CACHED_MODEL[key] = build(job)
    return model


def model_batch(batch: dict, job: TeacherJob) -> dict:
    """Stage 2 as a Ray Data task function: ``TeacherModel`` cached in this worker process."""
    return cached_in_worker(job, TeacherModel)(batch)


def model_stage(ds: ray.data.Dataset, job, task_fn, actor_class) -> ray.data.Dataset:
    """The model stage of a pass (the teacher's, or ``scoring``'s): ``task_fn(batch, job)`` as
    CPU tasks when ``job.uses_tasks``, else ``actor_class(job)`` as an actor pool of
    ``job.min_workers``..``job.num_workers`` actors (one GPU each with ``job.use_gpu``)."""
    resources = {"num_cpus": job.cpus_per_worker, "num_gpus": 1 if job.use_gpu else 0}
    common = {"batch_size": job.batch_size, "batch_format": "numpy", **resources}
    if job.uses_tasks:
        return ds.map_batches(
            task_fn,
            fn_kwargs={"job": job},
            compute=ray.data.TaskPoolStrategy(size=job.num_workers),
            **common,
        )
    smallest = job.min_workers or job.num_workers
    return ds.map_batches(
        actor_class,
        fn_constructor_kwargs={"job": job},
        compute=ray.data.ActorPoolStrategy(min_size=smallest, max_size=job.num_workers),
        **common,
    )


def summarize_batch(batch: dict, job: TeacherJob, progress: Queue | None = None) -> pa.Table:
    """Stage 3: the parquet rows of a block (see OUTPUT_SCHEMA); the images done are posted to
    ``progress`` (the driver's progress line)."""
    out: dict[str, list] = {name: [] for name in OUTPUT_SCHEMA.names}
    region_score, grids, acquired, positions = {}, {}, {}, {}
    groups: dict[str, np.ndarray] | None = None if job.rarity_ranks is None else {}
    embeddings = {} if "region_embedding" in batch else None
    hist = np.zeros(job.num_classes * 256, dtype=np.int64)
    maps = job.maps
    for i, sample_id in enumerate(map(str, batch["sample_id"])):
        label, level = batch["label"][i], batch["level"][i]
        grid = maps.of(sample_id, int(batch["height"][i]), int(batch["width"][i]))
        regions = [int(r) for r in batch["acquired"][i]]
        known = grid.mask(regions)
        scores = region_scores(batch["score"][i], known, grid)
        region_score[sample_id], grids[sample_id], acquired[sample_id] = scores, grid, regions
        if groups is not None:
            predicted = grid.region_class_counts(label, job.num_classes, known)
            groups[sample_id] = region_groups(predicted, np.asarray(job.rarity_ranks))
        if embeddings is not None:
            embeddings[sample_id] = batch["region_embedding"][i]
        positions[sample_id] = int(batch["pool_index"][i])
        counts = confidence_histogram(label, level, job.num_classes)
        hist += counts
        out["sample_id"].append(sample_id)
        out["pool_index"].append(positions[sample_id])
        out["label_png"].append(encode_png(label))
        out["conf_png"].append(encode_png(level))
        out["scores"].append(scores)
        out["class_pixels"].append(counts.reshape(job.num_classes, -1).sum(1))
        out["node_id"].append(str(batch["node_id"][i]))
        for column in ("block_hist", "cand_hist_keys", "cand_hist_counts"):
            out[column].append(np.zeros(0, np.int64))
    candidates = block_candidates(
        region_score,
        grids,
        acquired,
        mode=job.mode,
        budget_pixels=job.budget_pixels,
        top_k=job.top_k,
        exclude_border=job.exclude_border,
        positions=positions,
        groups=groups,
        embeddings=embeddings,
    )
    for position in out["pool_index"]:
        mine = candidates.image == position
        out["cand_regions"].append(candidates.region[mine].astype(np.int32))
        out["cand_scores"].append(candidates.score[mine].astype(np.float32))
        out["cand_areas"].append(candidates.area[mine].astype(np.int32))
        grouped = candidates.group is not None
        out["cand_groups"].append(candidates.group[mine] if grouped else np.zeros(0, np.int16))
        embedded = candidates.embedding is not None
        vectors = candidates.embedding[mine].reshape(-1) if embedded else np.zeros(0, np.float16)
        out["cand_embedding"].append(vectors)
    if out["sample_id"]:  # the block's totals, on its first row
        counted = CandidateHistogram.of(candidates)
        out["block_hist"][0] = hist
        out["cand_hist_keys"][0], out["cand_hist_counts"][0] = counted.keys, counted.counts
    post_images(progress, len(out["sample_id"]))
    return pa.table(out, schema=OUTPUT_SCHEMA)


def predict_rows(model: TeacherModel, rows: list[dict], job: TeacherJob) -> pa.Table:
    """The three stages on ``rows`` in this process, without Ray (benchmarks, tests): exactly
    what the pipeline computes for one batch."""
    batch = {key: np.asarray([r[key] for r in rows]) for key in rows[0] if key != "acquired"}
    batch["acquired"] = np.empty(len(rows), dtype=object)
    batch["acquired"][:] = [list(r["acquired"]) for r in rows]
    decoded = decode_images(batch, needs_truth(job), embedded_segments(job))
    return summarize_batch(model(decoded), job)


def embedded_segments(job: TeacherJob) -> RegionMaps | None:
    """The maps whose superpixels the model stage embeds (diverse selection over superpixels),
    read in the decode stage; None for squares or no embedding."""
    return job.maps if job.embed_regions and job.maps.superpixels else None


def needs_truth(job: TeacherJob) -> bool:
    """Whether the pass's score reads the ground truth (``scores.oracle_error``)."""
    return "ground_truth" in get_score(job.score).needs
