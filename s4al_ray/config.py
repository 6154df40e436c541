"""Typed experiment configuration: YAML files + ``key.path=value`` overrides, validated at load.

The schema (every key, default, range and doc) is in ``config_schema.py`` and re-exported here.
Loading fails fast, before Ray starts, with a message naming the offending key (and the nearest
valid key for a typo) and where it came from: the config file or the command line. Workers
receive the config sections as the (frozen-by-convention) dataclasses inside their stage jobs.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from typing import Any, Callable

from s4al_ray.config_schema import (
    AcquisitionConfig,
    AnnotationConfig,
    DataConfig,
    ExperimentConfig,
    LoopConfig,
    ModelConfig,
    RayConfig,
    RecoConfig,
    SyntheticConfig,
    TeacherConfig,
    TrainConfig,
    setting,
)
from s4al_ray.yamlfile import YamlError, dump_yaml, load_yaml

__all__ = [
    "ConfigError",
    "setting",
    "SyntheticConfig",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "RecoConfig",
    "TeacherConfig",
    "AcquisitionConfig",
    "AnnotationConfig",
    "LoopConfig",
    "RayConfig",
    "ExperimentConfig",
]


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the fix."""


# -- Building the tree from plain data


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
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value} is not a finite number")
    if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
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
        if node.get(part) is None:  # missing, or a section left empty in the file (``train:``)
            node[part] = {}
        child = node[part]
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


def changed_keys(
    saved: dict, now: dict, resumable: Callable[[str], bool] | tuple[str, ...]
) -> list[str]:
    """Sorted dotted keys whose values differ between a saved config and the one now asked for
    (either nested or already flattened; a key missing on one side counts as changed), leaving
    out those that may change on resumption: ``resumable`` is a predicate on the dotted key or a
    tuple of key prefixes."""
    flat_saved, flat_now = flatten(saved), flatten(now)
    may_change = resumable if callable(resumable) else (lambda key: key.startswith(resumable))
    return sorted(
        key
        for key in set(flat_saved) | set(flat_now)
        if flat_saved.get(key) != flat_now.get(key) and not may_change(key)
    )


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.epochs=3'`` -> ``('train.epochs', 3)``; values are parsed as YAML scalars (so
    ``train.lr=1e-3`` is a number and ``teacher.scales=[0.5,1]`` a list)."""
    if "=" not in text:
        raise ConfigError(
            f"override '{text}' (command line): expected key.path=value, e.g. train.epochs=3"
        )
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override '{text}' (command line): the key is missing")
    try:
        return key.strip(), load_yaml(raw, "") if raw.strip() else ""
    except YamlError as err:
        raise ConfigError(f"override '{text}' (command line): {err}") from None


def read_yaml(path: str) -> dict:
    """A YAML mapping from a file or URI; duplicate keys and invalid YAML are errors that name
    the file and the line."""
    from s4al_ray import storage

    if not storage.is_s3(path) and os.path.isdir(path):
        raise ConfigError(
            f"config file {path} is a directory; pass a YAML file, e.g. "
            f"{os.path.join(path, 'default.yaml')}"
        )
    try:
        text = storage.read_text(path)
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} not found") from err
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err}") from err
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a UTF-8 text (YAML) file") from None
    try:
        data = load_yaml(text, path)
    except YamlError as err:
        raise ConfigError(str(err)) from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    return data or {}


def _origin(message: str, path: str | None, override_keys: list[str]) -> str:
    """Where a failing key came from: the command line when an override set a key the message
    is about (hints such as "did you mean ..." or the list of valid keys do not count), else
    the config file."""
    subject = re.split(r"; (?:did you mean|valid keys)", message, maxsplit=1)[0]
    named = [k for k in override_keys if re.search(rf"(?<![\w.]){re.escape(k)}(?![\w])", subject)]
    if named:
        return " (command line: " + ", ".join(named) + ")"
    return f" (in {path})" if path else ""


def load_config(path: str | None = None, overrides: list[str] | tuple = ()) -> ExperimentConfig:
    """Load a YAML file (or the built-in defaults) and apply dotted overrides, then validate."""
    tree = read_yaml(path) if path else {}
    keys = []
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
        keys.append(key)
    try:
        cfg = build_config(ExperimentConfig, tree)
        validate(cfg)
    except ConfigError as err:
        raise ConfigError(f"{err}{_origin(str(err), path, keys)}") from None
    return cfg


def from_dict(tree: dict) -> ExperimentConfig:
    cfg = build_config(ExperimentConfig, tree)
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML that :func:`load_config` reads back to the same values."""
    return dump_yaml(to_dict(cfg))


def _check_resize(data: DataConfig, region_size: int) -> None:
    size = (data.resize_height, data.resize_width)
    if (0 in size) and size != (0, 0):
        raise ConfigError(
            f"data.resize_height/resize_width: {size[0]}x{size[1]}; set both, "
            "or both to 0 to keep the image size"
        )
    if size != (0, 0) and data.kind == "synthetic":
        raise ConfigError(
            "data.resize_*: the synthetic dataset is drawn at "
            "data.synthetic.height/width; set the size there"
        )
    if size != (0, 0) and region_size > min(size):
        raise ConfigError(
            f"acquisition.region_size ({region_size}) is larger than the resized "
            f"image ({size[0]}x{size[1]})"
        )


def _check_score(function: str) -> None:
    from s4al_ray.scores import SCORES  # the registry is the list of choices

    if function not in SCORES:
        raise ConfigError(f"acquisition.function: {function!r} is not one of: {', '.join(SCORES)}")


def location_settings(cfg: ExperimentConfig) -> tuple[tuple[str, str], ...]:
    """(key, value) of the settings that say where the run's data and results live: each a
    local path or an s3:// URI."""
    return (
        ("storage", cfg.storage),
        ("data.root", cfg.data.root),
        ("data.cache_dir", cfg.data.cache_dir),
    )


def _check_uris(cfg: ExperimentConfig) -> None:
    from s4al_ray.storage import uri_problem

    for key, value in location_settings(cfg):
        problem = uri_problem(value)
        if problem:
            raise ConfigError(f"{key}: {problem}")
    if cfg.s3_endpoint and not cfg.s3_endpoint.startswith(("http://", "https://")):
        raise ConfigError(
            f"s3_endpoint: {cfg.s3_endpoint!r} must be a URL, e.g. http://127.0.0.1:9000"
        )


def validate(cfg: ExperimentConfig) -> None:
    """Checks that involve more than one key, a registry, or the form of a URI."""
    _check_score(cfg.acquisition.function)
    _check_uris(cfg)
    _check_resize(cfg.data, cfg.acquisition.region_size)
    if not cfg.name or "/" in cfg.name or cfg.name.startswith("."):
        raise ConfigError(f"name: {cfg.name!r} must be a plain directory name")
    acq = cfg.acquisition
    if acq.round_budget > acq.total_budget:
        raise ConfigError(
            f"acquisition.round_budget ({acq.round_budget}) exceeds acquisition.total_budget "
            f"({acq.total_budget})"
        )
    if acq.function == "oracle_error" and cfg.oracle != "simulated":
        raise ConfigError(
            "acquisition.function: oracle_error reads the pool's ground truth, which only "
            f"oracle=simulated has (oracle={cfg.oracle}); it is a benchmark's upper bound"
        )
    if acq.selection != "ranked" and acq.mode != "budget":
        raise ConfigError(
            f"acquisition.selection: {acq.selection} shares out the round's pixel budget, which "
            f"acquisition.mode={acq.mode} does not use; set acquisition.mode=budget or "
            "acquisition.selection=ranked"
        )
    if cfg.data.kind == "synthetic":
        syn = cfg.data.synthetic
        if acq.region_size > min(syn.height, syn.width):
            raise ConfigError(
                f"acquisition.region_size ({acq.region_size}) is larger than the image "
                f"(data.synthetic.height x data.synthetic.width = {syn.height}x{syn.width}); "
                "choose a region of at most "
                f"{min(syn.height, syn.width)} px"
            )
    train = cfg.train
    if train.max_workers and train.max_workers < train.num_workers:
        raise ConfigError(
            f"train.max_workers ({train.max_workers}) is below train.num_workers "
            f"({train.num_workers}): set it to the largest group (elastic training), or 0 for a "
            "fixed group"
        )
    t = cfg.teacher
    if t.num_actors and t.min_actors > t.num_actors:
        raise ConfigError(
            f"teacher.min_actors ({t.min_actors}) exceeds teacher.num_actors ({t.num_actors})"
        )
    if any(s <= 0 or s > 4 for s in cfg.teacher.scales) or not cfg.teacher.scales:
        raise ConfigError(f"teacher.scales: {cfg.teacher.scales} must be 1-4 factors in (0, 4]")
