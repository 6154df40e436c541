"""``python run.py annotate --import <folder>``: commit human annotations of a query package."""

from __future__ import annotations

import sys

import ray

from s4al_ray.config import ConfigError, ExperimentConfig
from s4al_ray.experiment import Experiment
from s4al_ray.pool.actor import pool_snapshot
from s4al_ray.pool.manual import AnnotationError, pending_round, read_answers, store_labels
from s4al_ray.run_lock import hold_run_lock
from s4al_ray.runtime import connect


def import_annotations(
    cfg: ExperimentConfig, folder: str, address: str | None = None, log=print
) -> dict:
    """Check the masks in ``folder`` against the pending query and commit them through the pool
    actor. Raises AnnotationError (nothing committed) when a mask is missing or incomplete."""
    experiment = Experiment(cfg, log=log)
    experiment.preflight()
    connect(cfg, address)
    with hold_run_lock(experiment.layout, cfg.name):  # never beside a running driver
        return _commit_answers(experiment, folder, log)


def _commit_answers(experiment: Experiment, folder: str, log) -> dict:
    experiment.prepare()
    state = pool_snapshot(experiment.pool)
    round_index = pending_round(experiment.layout, state)
    if round_index is None:
        raise AnnotationError(f"{experiment.run_dir} has no query waiting for annotations")
    selection, class_pixels, masks = read_answers(
        experiment.layout, round_index, folder, experiment.data.num_classes
    )
    store_labels(experiment.layout, state, masks, selection)
    entry = ray.get(experiment.pool.commit.remote(round_index, selection, class_pixels))
    log(
        f"[annotate] round {round_index}: committed {entry['regions']} regions in "
        f"{entry['images']} images ({entry['pixels']} px). Continue with: python run.py "
        f"<same config and options>"
    )
    return entry


def annotate_command(cfg: ExperimentConfig, folder: str | None, address: str | None) -> int:
    if not folder:
        print("error: annotate needs --import <folder of PNG masks>", file=sys.stderr)
        return 2
    from s4al_ray.data.folder import DatasetError
    from s4al_ray.storage import StorageError

    try:
        import_annotations(cfg, folder, address)
    except (AnnotationError, ConfigError, DatasetError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
