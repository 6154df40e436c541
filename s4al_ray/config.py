"""Typed experiment configuration: YAML files + ``key.path=value`` overrides, validated at load.

Every number of an experiment lives here. Loading fails fast, before Ray starts, with a message
naming the offending key (and the nearest valid key for a typo). Worker code receives plain dicts
made by :func:`to_dict`, never the dataclasses, so nothing here has to be importable on workers
in a special way.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the fix."""


def setting(default: Any, *, lo: float | None = None, hi: float | None = None,
            choices: tuple | None = None, doc: str = "") -> Any:
    """A config dataclass field: its default plus the bounds, choices and help text that
    :func:`build_config` checks values against (also used by the sweep file's schema)."""
    meta = {"lo": lo, "hi": hi, "choices": choices, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SyntheticConfig:
    num_train: int = setting(240, lo=4, doc="images in the train split (initial labeled + pool)")
    num_val: int = setting(60, lo=1)
    height: int = setting(128, lo=32, hi=4096)
    width: int = setting(160, lo=32, hi=4096)
    seed: int = setting(0, doc="dataset seed (separate from the experiment seed)")


@dataclass
class DataConfig:
    kind: str = setting("synthetic", choices=("synthetic", "folder", "cityscapes", "camvid"))
    root: str = setting("data_cache/synthetic", doc="dataset directory or s3:// URI")
    cache_dir: str = setting("data_cache/prepared",
                             doc="prepared copies (train-id masks, resized images); dir or s3://")
    resize_height: int = setting(0, lo=0, hi=8192, doc="prepared image height; 0 = keep size")
    resize_width: int = setting(0, lo=0, hi=8192, doc="prepared image width; 0 = keep size")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    initial_labeled_frac: float = setting(0.1, lo=0.0, hi=1.0,
                                          doc="share of train images fully labeled at round 0")
    crop_height: int = setting(0, lo=0, doc="training crop; 0 = full image height")
    crop_width: int = setting(0, lo=0, doc="training crop; 0 = full image width")
    loader_workers: int = setting(0, lo=0, doc="torch DataLoader workers per train worker")


@dataclass
class ModelConfig:
    backbone: str = setting("mobilenet_v2",
                            choices=("mobilenet_v2", "resnet18", "resnet50", "resnet101"))
    output_stride: int = setting(16, choices=(8, 16))
    embed_dim: int = setting(64, lo=8, hi=1024, doc="ReCo representation size")
    head_channels: int = setting(256, lo=16, hi=1024,
                                 doc="ASPP/decoder width: 256 as in the paper; 128 for fast CPU "
                                     "runs")
    pretrained: str = setting("none", doc="none | imagenet | <path or s3:// URI to a checkpoint>")


@dataclass
class TrainConfig:
    num_workers: int = setting(1, lo=1, hi=4096, doc="Ray Train workers (DDP processes)")
    cpus_per_worker: int = setting(2, lo=1)
    use_gpu: bool = setting(False)
    amp: bool = setting(True, doc="bf16 mixed precision when on GPU")
    sync_bn: bool = setting(False, doc="SyncBatchNorm across workers (small per-GPU batches)")
    epochs: int = setting(3, lo=1)
    steps_per_epoch: int = setting(25, lo=1)
    labeled_batch: int = setting(4, lo=1, doc="labeled images per joint mini-batch and worker")
    pseudo_batch: int = setting(4, lo=0, doc="pseudo-labeled pool images per joint mini-batch")
    lr: float = setting(0.01, lo=0.0, hi=10.0)
    head_lr_mult: float = setting(10.0, lo=0.0)
    momentum: float = setting(0.9, lo=0.0, hi=1.0)
    weight_decay: float = setting(1e-4, lo=0.0, hi=1.0)
    poly_power: float = setting(0.9, lo=0.0)
    unsup_weight: float = setting(1.0, lo=0.0, doc="weight of the pseudo-label cross-entropy")
    reco_weight: float = setting(0.1, lo=0.0, doc="weight of the ReCo loss (0 disables it)")
    strong_aug: bool = setting(True, doc="strong augmentation of pseudo-labeled images")
    mix: str = setting("cutmix", choices=("none", "cutmix", "classmix"))
    fresh_student: bool = setting(True, doc="re-initialise the student every round")
    method: str = setting("self_training", choices=("self_training", "mean_teacher"),
                          doc="self_training: S4AL+ (pseudo-labels once per round, offline); "
                              "mean_teacher: the S4AL baseline (an EMA teacher labels every batch)")
    ema_decay: float = setting(0.99, lo=0.0, hi=1.0, doc="mean_teacher: EMA decay of the teacher")
    pseudo_labels: bool = setting(True, doc="false = supervised-only baseline: pool images "
                                            "contribute only their acquired ground truth")
    class_balanced: bool = setting(True, doc="repeat-factor sampling of pool images by the rarest "
                                             "class they contain")
    balance_threshold: float = setting(0.3, lo=0.0, hi=1.0,
                                       doc="class-balanced: classes in fewer images than this "
                                           "share are oversampled")
    max_failures: int = setting(1, lo=0, doc="worker-group restarts from the last checkpoint")


@dataclass
class RecoConfig:
    strong_threshold: float = setting(0.97, lo=0.0, hi=1.0)
    temperature: float = setting(0.5, lo=1e-3)
    num_queries: int = setting(128, lo=1)
    num_negatives: int = setting(256, lo=1)


@dataclass
class TeacherConfig:
    threshold: float = setting(0.7, lo=0.0, hi=1.0,
                               doc="confidence below which a pseudo-label is ignored")
    class_aware: bool = setting(True, doc="per-class thresholds so rare classes keep pseudo-labels")
    class_quantile: float = setting(0.5, lo=0.0, hi=1.0,
                                    doc="class-aware: per-class confidence quantile used as "
                                        "threshold")
    scales: list[float] = setting([1.0], doc="multi-scale averaging, e.g. [0.5, 1.0, 2.0]")
    flip: bool = setting(False, doc="average with the horizontally flipped prediction")
    batch_size: int = setting(16, lo=1)
    num_actors: int = setting(0, lo=0, doc="parallel inference workers (tasks or actors); 0 = one "
                                         "per free CPU (or GPU)")
    cpus_per_actor: int = setting(1, lo=1)
    reuse_workers: bool = setting(True, doc="CPU teacher as Ray Data tasks on worker processes "
                                            "that keep torch and the model loaded across batches "
                                            "and rounds; false (and GPU teachers): an actor pool")


@dataclass
class AcquisitionConfig:
    function: str = setting("entropy", doc="region score: a key of the registry in scores.py "
                                           "(entropy, class_weighted_entropy, margin, random)")
    region_size: int = setting(16, lo=1, doc="side of a square region in pixels")
    mode: str = setting("budget", choices=("budget", "topk"),
                        doc="budget: global ranking under a pixel budget; topk: k regions per "
                            "image")
    round_budget: float = setting(0.02, lo=0.0, hi=1.0,
                                  doc="labeled pixels acquired per round, share of train pixels")
    total_budget: float = setting(0.2, lo=0.0, hi=1.0,
                                  doc="cap on all labeled pixels, share of train pixels")
    top_k: int = setting(4, lo=1)
    exclude_border: bool = setting(False, doc="never acquire the outer ring of regions")


@dataclass
class LoopConfig:
    rounds: int = setting(3, lo=1, doc="training rounds (round 0 = initial labeled set only)")


@dataclass
class RayConfig:
    address: str = setting("", doc="cluster address; empty = RAY_ADDRESS or a new local Ray")
    num_cpus: int = setting(0, lo=0, doc="local Ray only; 0 = all cores")
    object_store_mb: int = setting(512, lo=64, doc="local Ray only")
    dashboard: bool = setting(False, doc="local Ray only: start the dashboard")
    worker_logs: bool = setting(False, doc="stream Ray worker logs to the terminal (they are "
                                           "always kept under /tmp/ray/session_latest/logs)")
    autoscale: bool = setting(False,
                              doc="the cluster adds nodes on demand: skip the fits-now check")


@dataclass
class ExperimentConfig:
    name: str = setting("default", doc="experiment name; the run directory is <storage>/<name>")
    seed: int = setting(0)
    storage: str = setting("runs", doc="local directory or s3://bucket/prefix for all artefacts")
    s3_endpoint: str = setting("", doc="S3-compatible endpoint URL; empty = AWS")
    oracle: str = setting("simulated", choices=("simulated", "manual"),
                          doc="simulated: reveal regions from the dataset's masks; manual: write "
                              "a query package for annotators and stop (run.py annotate)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    reco: RecoConfig = field(default_factory=RecoConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    acquisition: AcquisitionConfig = field(default_factory=AcquisitionConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    ray: RayConfig = field(default_factory=RayConfig)


# ---------------------------------------------------------------------------------------------
# Building the tree from plain data


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: unsupported annotation {tp}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
        raise ConfigError(
            f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _check_range(value: Any, meta: typing.Mapping, key: str) -> None:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if meta.get("choices") and v not in meta["choices"]:
            options = ", ".join(map(str, meta["choices"]))
            raise ConfigError(f"{key}: {v!r} is not one of: {options}")
        if meta.get("lo") is not None and v < meta["lo"]:
            raise ConfigError(f"{key}: {v} is below the minimum {meta['lo']}")
        if meta.get("hi") is not None and v > meta["hi"]:
            raise ConfigError(f"{key}: {v} is above the maximum {meta['hi']}")


def _unknown_key(key: str, valid: list[str]) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key '{key}'{hint}")


def build_config(cls: type, data: Any, prefix: str = "") -> Any:
    """The config dataclass ``cls`` from plain (YAML) data, every key and value checked against
    its field; ``prefix`` (``"train."``) names nested keys in messages. No cross-key checks
    (:func:`validate` does those for an experiment)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise _unknown_key(key, list(fields))
        tp = hints[name]
        if _is_config(tp):
            kwargs[name] = build_config(tp, value, key + ".")
        else:
            kwargs[name] = _coerce(value, tp, key)
            _check_range(kwargs[name], fields[name].metadata, key)
    return cls(**kwargs)


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """``tree[a][b] = value`` for ``dotted = "a.b"``, creating missing sections."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``), so YAML may use
    either form and saved configs compare key by key. An empty mapping is kept as a value: it
    may mean something (an override that empties a section), and dropping it would hide it."""
    out: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


def changed_keys(saved: dict, now: dict,
                 resumable: Callable[[str], bool] | tuple[str, ...]) -> list[str]:
    """Sorted dotted keys whose values differ between a saved config and the one now asked for
    (either nested or already flattened; a key missing on one side counts as changed), leaving
    out those that may change on resumption: ``resumable`` is a predicate on the dotted key or a
    tuple of key prefixes."""
    flat_saved, flat_now = flatten(saved), flatten(now)
    may_change = resumable if callable(resumable) else (lambda key: key.startswith(resumable))
    return sorted(key for key in set(flat_saved) | set(flat_now)
                  if flat_saved.get(key) != flat_now.get(key) and not may_change(key))


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.epochs=3'`` -> ``('train.epochs', 3)``; values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key.path=value, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def read_yaml(path: str) -> dict:
    from s4al_ray import storage

    try:
        text = storage.read_text(path)
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} not found") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    return data or {}


def load_config(path: str | None = None, overrides: list[str] | tuple = ()) -> ExperimentConfig:
    """Load a YAML file (or the built-in defaults) and apply dotted overrides, then validate."""
    tree = read_yaml(path) if path else {}
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    where = f" (in {path})" if path else ""
    try:
        cfg = build_config(ExperimentConfig, tree)
        validate(cfg)
    except ConfigError as err:
        raise ConfigError(f"{err}{where}") from None
    return cfg


def from_dict(tree: dict) -> ExperimentConfig:
    cfg = build_config(ExperimentConfig, tree)
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _check_resize(data: DataConfig, region_size: int) -> None:
    size = (data.resize_height, data.resize_width)
    if (0 in size) and size != (0, 0):
        raise ConfigError(f"data.resize_height/resize_width: {size[0]}x{size[1]}; set both, "
                          "or both to 0 to keep the image size")
    if size != (0, 0) and data.kind == "synthetic":
        raise ConfigError("data.resize_*: the synthetic dataset is drawn at "
                          "data.synthetic.height/width; set the size there")
    if size != (0, 0) and region_size > min(size):
        raise ConfigError(f"acquisition.region_size ({region_size}) is larger than the resized "
                          f"image ({size[0]}x{size[1]})")


def _check_score(function: str) -> None:
    from s4al_ray.scores import SCORES  # the registry is the list of choices

    if function not in SCORES:
        raise ConfigError(f"acquisition.function: {function!r} is not one of: "
                          f"{', '.join(SCORES)}")


def validate(cfg: ExperimentConfig) -> None:
    """Checks that involve more than one key, or a registry."""
    _check_score(cfg.acquisition.function)
    _check_resize(cfg.data, cfg.acquisition.region_size)
    if not cfg.name or "/" in cfg.name or cfg.name.startswith("."):
        raise ConfigError(f"name: {cfg.name!r} must be a plain directory name")
    acq = cfg.acquisition
    if acq.round_budget > acq.total_budget:
        raise ConfigError(
            f"acquisition.round_budget ({acq.round_budget}) exceeds acquisition.total_budget "
            f"({acq.total_budget})")
    if cfg.data.kind == "synthetic":
        syn = cfg.data.synthetic
        if acq.region_size > min(syn.height, syn.width):
            raise ConfigError(
                f"acquisition.region_size ({acq.region_size}) is larger than the image "
                f"({syn.height}x{syn.width}); choose a region of at most "
                f"{min(syn.height, syn.width)} px")
    if any(s <= 0 or s > 4 for s in cfg.teacher.scales) or not cfg.teacher.scales:
        raise ConfigError(f"teacher.scales: {cfg.teacher.scales} must be 1-4 factors in (0, 4]")
