"""The experiment's config schema: every key, its default, range and meaning.

Every number of an experiment lives here (``configs/default.yaml`` spells out the defaults).
Loading, validation and help are in ``config.py``; ``python run.py --help-config [section]``
prints this file's documentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def setting(
    default: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple | None = None,
    doc: str = "",
) -> Any:
    """A config dataclass field: its default plus the bounds, choices and help text that
    :func:`build_config` checks values against (also used by the sweep file's schema)."""
    meta = {"lo": lo, "hi": hi, "choices": choices, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SyntheticConfig:
    num_train: int = setting(240, lo=4, doc="images in the train split (initial labeled + pool)")
    num_val: int = setting(60, lo=1, doc="images in the val split")
    num_test: int = setting(
        0, lo=0, doc="images in the test split (scored by the last round and by evaluate)"
    )
    height: int = setting(96, lo=32, hi=4096, doc="image height in pixels")
    width: int = setting(128, lo=32, hi=4096, doc="image width in pixels")
    seed: int = setting(0, doc="dataset seed (separate from the experiment seed)")
    thin_scale: float = setting(
        1.0,
        lo=0.25,
        hi=8.0,
        doc="size multiple of the thin and small objects (pole width, sign size, pedestrian "
        "width); 1 = the default drawing",
    )


@dataclass
class DataConfig:
    kind: str = setting(
        "synthetic",
        choices=("synthetic", "folder", "cityscapes", "camvid"),
        doc="dataset format: the built-in generator, a folder (images/, masks/, classes.yaml), "
        "or the official Cityscapes / CamVid layouts",
    )
    root: str = setting(
        "data_cache/synthetic_96x128",
        doc="dataset directory or s3:// URI (synthetic: where it is generated; never written "
        "to otherwise)",
    )
    cache_dir: str = setting(
        "data_cache/prepared", doc="prepared copies (train-id masks, resized images); dir or s3://"
    )
    resize_height: int = setting(0, lo=0, hi=8192, doc="prepared image height; 0 = keep size")
    resize_width: int = setting(0, lo=0, hi=8192, doc="prepared image width; 0 = keep size")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    initial_labeled_frac: float = setting(
        0.1, lo=0.0, hi=1.0, doc="share of train images fully labeled at round 0"
    )
    crop_height: int = setting(0, lo=0, doc="training crop; 0 = full image height")
    crop_width: int = setting(0, lo=0, doc="training crop; 0 = full image width")
    loader_workers: int = setting(0, lo=0, doc="torch DataLoader workers per train worker")


@dataclass
class ModelConfig:
    backbone: str = setting(
        "mobilenet_v2",
        choices=("mobilenet_v2", "resnet18", "resnet50", "resnet101"),
        doc="DeepLabv3+ encoder (torchvision)",
    )
    output_stride: int = setting(
        16, choices=(8, 16), doc="input size / encoder output size; 8 sees thin objects better"
    )
    embed_dim: int = setting(64, lo=8, hi=1024, doc="ReCo representation size")
    head_channels: int = setting(
        128, lo=16, hi=1024, doc="ASPP/decoder width: 256 as in the paper; 128 for fast CPU runs"
    )
    pretrained: str = setting("none", doc="none | imagenet | <path or s3:// URI to a checkpoint>")


@dataclass
class TrainConfig:
    num_workers: int = setting(
        1, lo=1, hi=4096, doc="Ray Train workers (DDP processes); elastic: the smallest group"
    )
    max_workers: int = setting(
        0,
        lo=0,
        hi=4096,
        doc="elastic training: the largest group, grown into as nodes join (Ray Train restarts "
        "the group from its last epoch checkpoint); 0 = a fixed group of num_workers",
    )
    elastic_check_s: float = setting(
        60.0, lo=1.0, doc="elastic training: how often Ray Train looks for room to grow"
    )
    cpus_per_worker: int = setting(
        2, lo=1, doc="CPUs per train worker (torch threads, data loading)"
    )
    use_gpu: bool = setting(False, doc="one GPU per train worker and per teacher actor")
    amp: bool = setting(True, doc="bf16 mixed precision when on GPU")
    sync_bn: bool = setting(False, doc="SyncBatchNorm across workers (small per-GPU batches)")
    epochs: int = setting(3, lo=1, doc="epochs per round (a checkpoint after each)")
    steps_per_epoch: int = setting(25, lo=1, doc="optimiser steps per epoch")
    labeled_batch: int = setting(4, lo=1, doc="labeled images per joint mini-batch and worker")
    pseudo_batch: int = setting(4, lo=0, doc="pseudo-labeled pool images per joint mini-batch")
    lr: float = setting(0.01, lo=0.0, hi=10.0, doc="base learning rate (SGD, poly decay)")
    head_lr_mult: float = setting(
        10.0, lo=0.0, doc="learning-rate multiple of the freshly initialised heads"
    )
    momentum: float = setting(0.9, lo=0.0, hi=1.0, doc="SGD momentum (Nesterov when > 0)")
    weight_decay: float = setting(1e-4, lo=0.0, hi=1.0, doc="SGD weight decay")
    poly_power: float = setting(
        0.9, lo=0.0, doc="poly schedule: lr * (1 - step / steps) ** power over the round"
    )
    unsup_weight: float = setting(1.0, lo=0.0, doc="weight of the pseudo-label cross-entropy")
    reco_weight: float = setting(0.1, lo=0.0, doc="weight of the ReCo loss (0 disables it)")
    strong_aug: bool = setting(True, doc="strong augmentation of pseudo-labeled images")
    mix: str = setting(
        "cutmix", choices=("none", "cutmix", "classmix"), doc="mixing of pseudo-labeled images"
    )
    fresh_student: bool = setting(
        False, doc="re-initialise the student every round; false = continue from the last one"
    )
    method: str = setting(
        "self_training",
        choices=("self_training", "mean_teacher"),
        doc="self_training: S4AL+ (pseudo-labels once per round, offline); "
        "mean_teacher: the S4AL baseline (an EMA teacher labels every batch)",
    )
    ema_decay: float = setting(0.99, lo=0.0, hi=1.0, doc="mean_teacher: EMA decay of the teacher")
    pseudo_labels: bool = setting(
        True,
        doc="false = supervised-only baseline: pool images "
        "contribute only their acquired ground truth",
    )
    class_balanced: bool = setting(
        True, doc="repeat-factor sampling of pool images by the rarest class they contain"
    )
    balance_threshold: float = setting(
        0.3,
        lo=0.0,
        hi=1.0,
        doc="class-balanced: classes in fewer images than this share are oversampled",
    )
    max_failures: int = setting(1, lo=0, doc="worker-group restarts from the last checkpoint")


@dataclass
class RecoConfig:
    strong_threshold: float = setting(
        0.97, lo=0.0, hi=1.0, doc="ReCo: pixels below this confidence are hard queries"
    )
    temperature: float = setting(0.5, lo=1e-3, doc="ReCo: softmax temperature")
    num_queries: int = setting(128, lo=1, doc="ReCo: query pixels per class and batch")
    num_negatives: int = setting(256, lo=1, doc="ReCo: negative keys per query")
    warmup_steps: int = setting(
        0,
        lo=0,
        doc="ReCo: its weight ramps linearly from 0 to train.reco_weight over this many "
        "optimiser steps of the run (counted across rounds when the student continues); "
        "0 = the full weight from the first step",
    )


@dataclass
class TeacherConfig:
    threshold: float = setting(
        0.7, lo=0.0, hi=1.0, doc="confidence below which a pseudo-label is ignored"
    )
    class_aware: bool = setting(True, doc="per-class thresholds so rare classes keep pseudo-labels")
    class_quantile: float = setting(
        0.5, lo=0.0, hi=1.0, doc="class-aware: per-class confidence quantile used as threshold"
    )
    scales: list[float] = setting([1.0], doc="multi-scale averaging, e.g. [0.5, 1.0, 2.0]")
    flip: bool = setting(False, doc="average with the horizontally flipped prediction")
    batch_size: int = setting(16, lo=1, doc="images per inference batch")
    num_actors: int = setting(
        0,
        lo=0,
        doc="parallel inference workers (tasks or actors); 0 = one per free CPU (or GPU). On an "
        "autoscaling cluster: the most GPU actors the cluster can grow to",
    )
    min_actors: int = setting(
        0,
        lo=0,
        doc="GPU actor pool: its smallest size (the pool grows to num_actors while nodes are "
        "added); 0 = a fixed pool of num_actors",
    )
    cpus_per_actor: int = setting(1, lo=1, doc="CPUs per teacher worker (torch threads)")
    reuse_workers: bool = setting(
        True,
        doc="CPU teacher as Ray Data tasks on worker processes "
        "that keep torch and the model loaded across batches "
        "and rounds; false (and GPU teachers): an actor pool",
    )


@dataclass
class AcquisitionConfig:
    function: str = setting(
        "entropy",
        doc="region score: a key of the score registry (s4al_ray/scores.py)",
    )
    region_size: int = setting(
        20, lo=1, doc="side of a square region in pixels (slic: superpixels of about size^2 px)"
    )
    regions: str = setting(
        "squares",
        choices=("squares", "slic"),
        doc="the unit of labeling: squares of region_size, or SLIC superpixels (scikit-image) "
        "that follow colour edges, segmented once per run and counted at their true size",
    )
    mode: str = setting(
        "budget",
        choices=("budget", "topk"),
        doc="budget: global ranking under a pixel budget; topk: k regions per image",
    )
    round_budget: float = setting(
        0.02, lo=0.0, hi=1.0, doc="labeled pixels acquired per round, share of train pixels"
    )
    total_budget: float = setting(
        0.2, lo=0.0, hi=1.0, doc="cap on all labeled pixels, share of train pixels"
    )
    top_k: int = setting(4, lo=1, doc="topk mode: regions per image and round")
    selection: str = setting(
        "ranked",
        choices=("ranked", "class_balanced", "diverse"),
        doc="ranked: the best scores over the pool fill the budget; class_balanced: each class "
        "the teacher predicts gets an equal share of the budget for the best regions showing "
        "it, rarest labeled class first (what a class cannot use passes on); diverse: k-center "
        "over the representation head's region embeddings among the best-scoring regions "
        "(acquisition.diversity_shortlist), so a round does not spend its budget on "
        "near-duplicates",
    )
    diversity_shortlist: float = setting(
        3.0,
        lo=1.0,
        doc="selection=diverse: the shortlist of best-scoring regions it spreads the budget "
        "over, in multiples of the round budget (1 = ranked selection)",
    )
    exclude_border: bool = setting(False, doc="never acquire the outer ring of regions")


@dataclass
class LoopConfig:
    rounds: int = setting(3, lo=1, doc="training rounds (round 0 = initial labeled set only)")


@dataclass
class AnnotationConfig:
    tool: str = setting(
        "folder",
        choices=("folder", "label_studio", "cvat"),
        doc="oracle=manual: the query package's format. folder = PNG masks painted by hand; "
        "label_studio = a task import + labeling config with the teacher's pseudo-labels as "
        "predictions; cvat = images + CVAT for images 1.1 XML with them as pre-annotations",
    )
    local_files_root: str = setting(
        "/",
        doc="label_studio with a local run: the directory Label Studio serves local files "
        "from (its LOCAL_FILES_DOCUMENT_ROOT); task image URLs are relative to it",
    )
    url: str = setting(
        "",
        doc="label_studio: a Label Studio server (e.g. http://127.0.0.1:8080) to push each "
        "round's tasks to, into the project 's4al-ray: <name>'; its access token comes from "
        "LABEL_STUDIO_API_KEY (never logged). annotate --import label-studio then fetches the "
        "export from it",
    )


@dataclass
class RayConfig:
    address: str = setting("", doc="cluster address; empty = RAY_ADDRESS or a new local Ray")
    num_cpus: int = setting(0, lo=0, doc="local Ray only; 0 = all cores")
    object_store_mb: int = setting(512, lo=64, doc="local Ray only")
    dashboard: bool = setting(False, doc="local Ray only: start the dashboard")
    worker_logs: bool = setting(
        False,
        doc="stream Ray worker logs to the terminal (they are "
        "always kept under /tmp/ray/session_latest/logs)",
    )
    autoscale: bool = setting(
        False, doc="the cluster adds nodes on demand: skip the fits-now check"
    )


@dataclass
class ExperimentConfig:
    name: str = setting("default", doc="experiment name; the run directory is <storage>/<name>")
    seed: int = setting(0, doc="seeds the initial labeled set, training and acquisition")
    storage: str = setting("runs", doc="local directory or s3://bucket/prefix for all artefacts")
    s3_endpoint: str = setting("", doc="S3-compatible endpoint URL; empty = AWS")
    storage_shared: bool = setting(
        False,
        doc="local paths in storage, data.root and data.cache_dir are on a filesystem every "
        "node mounts at the same path (NFS, EFS): allow them on a multi-node cluster",
    )
    tracking: list[str] = setting(
        ["tensorboard"],
        choices=("tensorboard", "mlflow", "wandb"),
        doc="where the config, epoch and round metrics and reports go: tensorboard = event files "
        "in <run>/tensorboard/; mlflow = one MLflow run per experiment (pip install mlflow); "
        "wandb = one W&B run, offline into <run>/wandb/ without a key (pip install wandb); "
        "[] = none",
    )
    tracking_project: str = setting(
        "s4al-ray", doc="the MLflow experiment and the W&B project runs are logged to"
    )
    tracking_uri: str = setting(
        "",
        doc="MLflow tracking server or store (http://host:5000, sqlite:///mlflow.db); empty = "
        "MLFLOW_TRACKING_URI or MLflow's local default. Credentials only from the environment "
        "(MLFLOW_TRACKING_TOKEN, ...)",
    )
    oracle: str = setting(
        "simulated",
        choices=("simulated", "manual"),
        doc="simulated: reveal regions from the dataset's masks; manual: write "
        "a query package for annotators and stop (run.py annotate)",
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    reco: RecoConfig = field(default_factory=RecoConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    acquisition: AcquisitionConfig = field(default_factory=AcquisitionConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    annotation: AnnotationConfig = field(default_factory=AnnotationConfig)
    ray: RayConfig = field(default_factory=RayConfig)
