"""The round's stage inputs and outputs, built in one place for the driver and the benchmarks.

``student_job`` and ``teacher_job`` turn (config, dataset, pool state, run layout) into the typed
jobs their workers read; ``summarize_teacher`` turns a teacher pass into what the next round's
student needs (per-class thresholds, class-balanced pool weights), saved beside the pass as
``teacher/round_XXX.json``. Nothing else carries data from one round to the next. ``scoring_job``
scores a checkpoint on a split (``python run.py evaluate``, the last round's test split).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from s4al_ray import storage
from s4al_ray.acquisition import class_rarity_ranks, inverse_frequency_weights
from s4al_ray.acquisition_diversity import candidate_pixels
from s4al_ray.config import ExperimentConfig
from s4al_ray.data.io import load_mask
from s4al_ray.data.manifest import DatasetInfo
from s4al_ray.data.train_inputs import write_train_inputs
from s4al_ray.data.training import repeat_factors
from s4al_ray.layout import RunLayout
from s4al_ray.pool.index import ImageSizes
from s4al_ray.pool.oracle import class_histogram
from s4al_ray.pool.state import PoolState
from s4al_ray.pseudo_labels import class_thresholds, kept_fraction
from s4al_ray.region_maps import RegionMaps
from s4al_ray.runtime import TeacherWorkers
from s4al_ray.scores import get_score
from s4al_ray.scoring import ScoringJob
from s4al_ray.student import StudentJob
from s4al_ray.superpixels import SegmentAreas
from s4al_ray.teacher import TeacherJob, TeacherOutput, uses_tasks


@dataclass(frozen=True)
class TeacherSummary:
    """What a finished teacher pass hands to the next round (and to the round record)."""

    thresholds: list[float]
    kept_frac: float  # share of pool pixels the student trains on as pseudo-labels
    seconds: float
    images_per_s: float
    pool_weights: dict[str, float] | None = None  # class-balanced sampling of pool images
    nodes: dict[str, int] | None = None  # Ray node id -> images its teacher model predicted

    def record_fields(self) -> dict:
        return {
            "teacher/thresholds": self.thresholds,
            "teacher/kept_frac": self.kept_frac,
            "time/teacher_s": self.seconds,
            "teacher/images_per_s": self.images_per_s,
            "teacher/nodes": self.nodes or {},
        }

    def save(self, uri: str) -> None:
        payload = self.record_fields()
        if self.pool_weights is not None:
            payload["teacher/pool_weights"] = self.pool_weights
        storage.write_text(uri, json.dumps(payload))

    @classmethod
    def load(cls, uri: str) -> "TeacherSummary | None":
        if not storage.exists(uri):
            return None
        data = json.loads(storage.read_text(uri))
        return cls(
            data["teacher/thresholds"],
            data["teacher/kept_frac"],
            data["time/teacher_s"],
            data["teacher/images_per_s"],
            data.get("teacher/pool_weights"),
            data.get("teacher/nodes"),
        )


def summarize_teacher(
    cfg: ExperimentConfig, output: TeacherOutput, seconds: float, images: int
) -> TeacherSummary:
    t = cfg.teacher
    thresholds = class_thresholds(output.hist, t.threshold, t.class_aware, t.class_quantile)
    weights = None
    if cfg.train.class_balanced:
        weights = repeat_factors(output.class_pixels, cfg.train.balance_threshold)
    return TeacherSummary(
        thresholds,
        kept_fraction(output.hist, thresholds),
        seconds,
        images / max(seconds, 1e-9),
        weights,
        output.nodes,
    )


def crop_size(cfg: ExperimentConfig, data: DatasetInfo) -> tuple[int, int]:
    """The training crop: as configured, else the smallest train image side."""
    rows = data.rows("train")
    return (
        cfg.data.crop_height or min(row["height"] for row in rows),
        cfg.data.crop_width or min(row["width"] for row in rows),
    )


def pool_rows(
    cfg: ExperimentConfig, data: DatasetInfo, state: PoolState, layout: RunLayout
) -> list[dict]:
    """Pool images as the student sees them: with a manual oracle, acquired labels come from the
    annotators' files, not from the dataset's masks."""
    by_id = {row["sample_id"]: row for row in data.rows("train")}
    acquired = state.acquired
    manual = cfg.oracle == "manual"
    return [
        {**by_id[s], "mask_uri": layout.oracle_label(s)} if manual and s in acquired else by_id[s]
        for s in state.pool_ids
    ]


def student_job(
    cfg: ExperimentConfig,
    data: DatasetInfo,
    state: PoolState,
    layout: RunLayout,
    r: int,
    previous: TeacherSummary | None,
) -> StudentJob:
    """Round ``r``'s training: the labeled images, and from round 1 the pool with the previous
    round's teacher pass (``previous``) and the regions acquired so far. The rows go to the
    round's training-inputs file, which the workers read by reference."""
    by_id = {row["sample_id"]: row for row in data.rows("train")}
    pool_items = pool_rows(cfg, data, state, layout) if previous is not None else []
    weights = previous.pool_weights if previous is not None else None
    write_train_inputs(
        layout.train_inputs(r),
        [by_id[s] for s in state.labeled],
        pool_items,
        data.rows("val"),
        state.acquired,
        weights,
    )
    pool: dict = {}
    if previous is not None:
        pool = {
            "pseudo_uri": layout.teacher(r - 1),
            "thresholds": previous.thresholds,
            "weighted_pool": bool(weights),
            "regions": state.maps,
        }
    init = None if r == 0 or cfg.train.fresh_student else layout.checkpoint(r - 1)
    return StudentJob(
        round=r,
        seed=cfg.seed,
        num_classes=data.num_classes,
        crop=crop_size(cfg, data),
        train=cfg.train,
        model=cfg.model,
        reco=cfg.reco,
        loader_workers=cfg.data.loader_workers,
        inputs_uri=layout.train_inputs(r),
        num_labeled=len(state.labeled),
        num_pool=len(pool_items),
        run_name=f"{cfg.name}-round{r:03d}",
        train_dir=layout.train_dir,
        checkpoint_uri=layout.checkpoint(r),
        init_checkpoint=init,
        **pool,
    )


def teacher_rows(data: DatasetInfo, state: PoolState) -> list[dict]:
    """The teacher's input: every pool image with its acquired regions (scored as known)."""
    by_id = {row["sample_id"]: row for row in data.rows("train")}
    pool = state.pool_ids
    return [
        {**by_id[s], "acquired": regions, "pool_index": i}
        for i, (s, regions) in enumerate(zip(pool, state.acquired.lists(pool)))
    ]


def teacher_job(
    cfg: ExperimentConfig,
    data: DatasetInfo,
    state: PoolState,
    r: int,
    checkpoint: str,
    workers: TeacherWorkers,
) -> TeacherJob:
    score = get_score(cfg.acquisition.function)
    weights = None
    if "class_weights" in score.needs:
        weights = inverse_frequency_weights(state.labeled_class_pixels).tolist()
    rarity = None
    if cfg.acquisition.selection == "class_balanced":
        rarity = class_rarity_ranks(state.labeled_class_pixels).tolist()
    t, acq = cfg.teacher, cfg.acquisition
    return TeacherJob(
        round=r,
        seed=cfg.seed + r,
        model=cfg.model,
        num_classes=data.num_classes,
        checkpoint_uri=checkpoint,
        checkpoint_stamp=storage.stamp(checkpoint),
        region_size=state.region_size,
        regions=state.maps,
        score=score.name,
        class_weights=weights,
        scales=list(t.scales),
        flip=t.flip,
        use_gpu=cfg.train.use_gpu,
        cpus_per_worker=t.cpus_per_actor,
        reuse_workers=t.reuse_workers,
        num_workers=workers.largest,
        batch_size=t.batch_size,
        budget_pixels=candidate_pixels(
            acq.selection, acquisition_budget(cfg, state), acq.diversity_shortlist
        ),
        mode=acq.mode,
        top_k=acq.top_k,
        exclude_border=acq.exclude_border,
        min_workers=workers.smallest,
        rarity_ranks=rarity,
        embed_regions=acq.selection == "diverse",
    )


def scoring_job(
    cfg: ExperimentConfig,
    data: DatasetInfo,
    checkpoint: str,
    workers: TeacherWorkers,
    predictions: tuple[str, ...] = (),
) -> ScoringJob:
    """Scoring ``checkpoint`` (``scoring.score_split``): on the teacher's workers and batches."""
    t = cfg.teacher
    return ScoringJob(
        model=cfg.model,
        num_classes=data.num_classes,
        checkpoint_uri=checkpoint,
        checkpoint_stamp=storage.stamp(checkpoint),
        use_gpu=cfg.train.use_gpu,
        cpus_per_worker=t.cpus_per_actor,
        uses_tasks=uses_tasks(t.reuse_workers, cfg.train.use_gpu),
        num_workers=workers.largest,
        batch_size=t.batch_size,
        min_workers=workers.smallest,
        predictions=predictions,
    )


def acquisition_budget(cfg: ExperimentConfig, state: PoolState) -> int:
    """Pixels round acquisition may take: the round budget, capped by the total budget."""
    total = state.total_pixels
    acq = cfg.acquisition
    return max(
        min(int(acq.round_budget * total), int(acq.total_budget * total) - state.labeled_pixels), 0
    )


def initial_pool_state(
    cfg: ExperimentConfig,
    data: DatasetInfo,
    maps: RegionMaps | None = None,
    segments: SegmentAreas | None = None,
) -> PoolState:
    """Round 0's pool: ``data.initial_labeled_frac`` of the train images fully labeled, drawn
    with the experiment seed, and their class pixels counted from the ground truth; its regions
    ``maps`` (squares of acquisition.region_size unless given, with ``segments``' areas for
    superpixels)."""
    train = data.rows("train")
    rng = np.random.default_rng(cfg.seed)
    count = int(round(cfg.data.initial_labeled_frac * len(train)))
    # At least one labeled image; all of them only when asked (the fully supervised reference).
    if cfg.data.initial_labeled_frac >= 1.0:
        count = max(count, 1)
    else:
        count = min(max(count, 1), len(train) - 1)
    labeled = sorted(train[i]["sample_id"] for i in rng.permutation(len(train))[:count])
    by_id = {r["sample_id"]: r for r in train}
    counts = sum(
        class_histogram(load_mask(by_id[s]["mask_uri"]), data.num_classes) for s in labeled
    )
    return PoolState(
        region_size=cfg.acquisition.region_size,
        num_classes=data.num_classes,
        sizes=ImageSizes.of_rows(train),
        labeled=labeled,
        initial_class_pixels=np.asarray(counts).tolist(),
        maps=maps,
        segments=segments,
    )
