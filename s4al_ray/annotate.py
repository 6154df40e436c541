"""``python run.py annotate --import <source>``: commit human annotations of a query package
(a folder of PNG masks, a Label Studio JSON export or a CVAT for images 1.1 export)."""

from __future__ import annotations

import sys

import ray

from s4al_ray import storage
from s4al_ray.config import ConfigError, ExperimentConfig
from s4al_ray.experiment import Experiment
from s4al_ray.pool.label_studio_server import EXPORT_SOURCE, fetch_export, project_title
from s4al_ray.pool.manual import AnnotationError, pending_round, read_answers, store_labels
from s4al_ray.run_lock import hold_run_lock
from s4al_ray.runtime import connect


def import_annotations(
    cfg: ExperimentConfig, source: str, address: str | None = None, log=print
) -> dict:
    """Check the answers in ``source`` against the pending query and commit them through the
    pool actor. Raises AnnotationError (nothing committed) when an answer is missing or
    incomplete. Once a round is committed, importing again changes nothing."""
    experiment = Experiment(cfg, log=log)
    experiment.preflight()
    connect(cfg, address)
    with hold_run_lock(experiment.layout, cfg.name):  # never beside a running driver
        return _commit_answers(experiment, source, log)


def _commit_answers(experiment: Experiment, source: str, log) -> dict:
    experiment.prepare()
    state = experiment.committed  # fetched by prepare
    round_index = pending_round(experiment.layout, state)
    if round_index is None:
        asked = [e for e in state.ledger if storage.exists(experiment.layout.queries(e["round"]))]
        if not asked:
            raise AnnotationError(f"{experiment.run_dir} has no query waiting for annotations")
        log(
            f"[annotate] round {asked[-1]['round']}'s annotations are already committed: nothing "
            "changed. Continue with: python run.py <same config and options>"
        )
        return asked[-1]
    if source == EXPORT_SOURCE:
        source = _fetch_export(experiment, round_index, log)
    selection, class_pixels, masks = read_answers(
        experiment.layout, round_index, source, experiment.data.num_classes
    )
    store_labels(experiment.layout, state, masks, selection)
    entry = ray.get(experiment.pool.commit.remote(round_index, selection, class_pixels))
    log(
        f"[annotate] round {round_index}: committed {entry['regions']} regions in "
        f"{entry['images']} images ({entry['pixels']} px). Continue with: python run.py "
        f"<same config and options>"
    )
    return entry


def _fetch_export(experiment: Experiment, round_index: int, log) -> str:
    """The run's Label Studio project exported from ``annotation.url`` and kept in the round's
    query package (the record of what was committed); returns its URI."""
    url = experiment.cfg.annotation.url
    if not url:
        raise AnnotationError(
            f"--import {EXPORT_SOURCE} needs annotation.url (the Label Studio server the round "
            "was pushed to); or pass the path of a JSON export"
        )
    title = project_title(experiment.cfg.name)
    try:
        text = fetch_export(url, title)
    except Exception as err:  # the SDK's ApiError or httpx's connection errors
        raise AnnotationError(f"{url}: could not export project {title!r} ({err})") from None
    uri = storage.join(experiment.layout.queries(round_index), "label_studio", "export.json")
    storage.write_text(uri, text)
    log(f"[annotate] exported project {title!r} from {url} to {uri}")
    return uri


def annotate_command(cfg: ExperimentConfig, source: str | None, address: str | None) -> int:
    if not source:
        print(
            "error: annotate needs --import <folder of PNG masks | Label Studio .json export | "
            f"CVAT .xml/.zip export | {EXPORT_SOURCE} (fetched from annotation.url)>",
            file=sys.stderr,
        )
        return 2
    from s4al_ray.data.folder import DatasetError
    from s4al_ray.storage import StorageError

    try:
        import_annotations(cfg, source, address)
    except (AnnotationError, ConfigError, DatasetError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
