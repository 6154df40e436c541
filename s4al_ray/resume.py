"""Whether a run directory may be resumed with a config: what may change between a run and its
resumption, and the check that refuses the rest before anything is written."""

from __future__ import annotations

import json

from s4al_ray import storage
from s4al_ray.config import (
    ConfigError,
    ExperimentConfig,
    changed_keys,
    flatten,
    read_yaml,
    to_dict,
)
from s4al_ray.layout import RUN_FORMAT, RunLayout

# Keys that may change between a run and its resumption without mixing incompatible results:
# where and how wide the work runs, how many rounds, and where results and metrics go.
RESUMABLE_KEYS = (
    "ray.",
    "train.num_workers",
    "train.max_workers",
    "train.elastic_check_s",
    "train.max_failures",
    "train.cpus_per_worker",
    "train.use_gpu",
    "teacher.num_actors",
    "teacher.min_actors",
    "teacher.cpus_per_actor",
    "teacher.batch_size",
    "loop.rounds",
    "data.loader_workers",
    "storage",
    "s3_endpoint",
    "tracking",
    "tracking_uri",
)


def check_resumable(layout: RunLayout, cfg: ExperimentConfig) -> None:
    """A rerun must use a compatible config; otherwise results would silently mix. Also checks
    that the run directory is writable (a wrong bucket or credential fails here)."""
    storage.check_writable(layout.run_dir)
    if not storage.exists(layout.marker):
        return
    try:
        fmt = json.loads(storage.read_text(layout.marker)).get("format")
    except (ValueError, AttributeError):
        fmt = "unreadable"
    if fmt != RUN_FORMAT:
        raise ConfigError(
            f"{layout.run_dir} was written by an incompatible s4al-ray "
            f"(format {fmt}, expected {RUN_FORMAT}); use another name="
        )
    # A key an s4al-ray newer than the run added reads as its default: the run ran without it,
    # which is what the default does (a new option never changes what the default computes).
    saved = {**flatten(to_dict(ExperimentConfig())), **flatten(read_yaml(layout.config))}
    now = flatten(to_dict(cfg))
    changed = changed_keys(saved, now, RESUMABLE_KEYS)
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
        raise ConfigError(
            f"{layout.run_dir} holds a run with a different config ({detail}). Resume it "
            "with the same settings, or start a new experiment with name=<new name>"
        )
