"""``python run.py evaluate --checkpoint <round | last | uri>``: score a checkpoint on a split.

The checkpoint is a round's student of this experiment (its number, or ``last``) or any
checkpoint file (local or ``s3://``: a ``{"model": state_dict}`` or a bare state_dict, e.g. a Ray
Train epoch checkpoint's ``model.pt``). It is scored on Ray Data (``scoring.score_split``) and the
results go to ``<run>/evaluate/<split>_<checkpoint>/``; the per-class table is printed. Every
input (split, checkpoint, dataset) is checked before Ray starts, and nothing is written outside
that folder.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass

from s4al_ray import storage
from s4al_ray.config import ConfigError, ExperimentConfig
from s4al_ray.layout import RunLayout


@dataclass(frozen=True)
class CheckpointChoice:
    uri: str
    label: str  # names the output folder: round_003, or <file stem>-<hash of the uri>


def resolve_checkpoint(layout: RunLayout, value: str) -> CheckpointChoice:
    """``--checkpoint``: a round number, ``last``, or a checkpoint URI."""
    if value == "last" or value.isdigit():
        rounds = layout.checkpoint_rounds()
        if not rounds:
            raise ConfigError(
                f"--checkpoint {value}: {layout.run_dir} has no round checkpoint yet (is the "
                f"config's name and storage the run's?); give a checkpoint file instead"
            )
        r = rounds[-1] if value == "last" else int(value)
        if r not in rounds:
            listed = ", ".join(map(str, rounds))
            raise ConfigError(
                f"--checkpoint {value}: round {r} has no checkpoint in {layout.run_dir}; "
                f"rounds with one: {listed} (or last)"
            )
        return CheckpointChoice(layout.checkpoint(r), layout.round_label(r))
    uri = value if value.startswith("s3://") else storage.absolute(value)
    if storage.is_dir(uri):  # a Ray Train checkpoint directory
        from s4al_ray.student import MODEL_FILE

        uri = storage.join(uri, MODEL_FILE)
    if not storage.exists(uri):
        raise ConfigError(
            f"--checkpoint {value}: no such file; give a round number, 'last', or a checkpoint "
            f"file (.pt, local or s3://)"
        )
    stem = uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return CheckpointChoice(uri, f"{stem}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}")


def check_checkpoint(cfg: ExperimentConfig, num_classes: int, uri: str) -> None:
    """Load ``uri`` into the configured model here, so a wrong file fails before Ray starts."""
    from s4al_ray.model import model_from_config
    from s4al_ray.model.weights import load_checkpoint

    model = model_from_config(cfg.model, num_classes, pretrained="none")
    try:
        load_checkpoint(model, uri)
    except Exception as err:  # noqa: BLE001  (torch's errors differ by what the file holds)
        raise ConfigError(
            f"--checkpoint {uri} cannot be loaded into the configured model "
            f"({cfg.model.backbone}, {num_classes} classes): {err}. Use the config the "
            f"checkpoint was trained with."
        ) from err


def split_rows(data, split: str) -> list[dict]:
    rows = data.rows(split)
    if not rows:
        present = ", ".join(
            f"{s} ({len(data.rows(s))})" for s in ("train", "val", "test") if data.rows(s)
        )
        raise ConfigError(f"--split {split}: the dataset has no {split} images; it has {present}")
    return rows


def evaluate_checkpoint(
    cfg: ExperimentConfig,
    checkpoint: str,
    split: str = "val",
    predictions: int = 0,
    address: str | None = None,
    log=print,
):
    """Score ``checkpoint`` on ``split``; returns (scoring.SplitScore, output folder)."""
    from s4al_ray.data.check import require_clean
    from s4al_ray.data.registry import load_dataset
    from s4al_ray.jobs import scoring_job
    from s4al_ray.report import format_class_table
    from s4al_ray.runtime import check_cluster_paths, connect, teacher_workers
    from s4al_ray.scoring import score_to_folder

    storage.configure_endpoint(cfg.s3_endpoint)
    layout = RunLayout.of(cfg.storage, cfg.name)
    if predictions < 0:
        raise ConfigError(f"--predictions {predictions}: give 0 or more images")
    choice = resolve_checkpoint(layout, checkpoint)
    storage.check_writable(layout.run_dir)  # where the scores go: fails now, not after them
    data = load_dataset(cfg.data, cfg.seed)
    rows = split_rows(data, split)
    require_clean(data, log)
    check_checkpoint(cfg, data.num_classes, choice.uri)
    res = connect(cfg, address)
    check_cluster_paths(cfg, res)  # the split's images are read where the workers run
    if res.nodes > 1 and not (storage.is_s3(choice.uri) or cfg.storage_shared):
        raise ConfigError(
            f"--checkpoint {choice.uri} is a file on this node, and the Ray cluster has "
            f"{res.nodes} nodes: put it on S3, or say every node mounts it with "
            "storage_shared=true"
        )
    job = scoring_job(
        cfg,
        data,
        choice.uri,
        teacher_workers(cfg, res),
        tuple(sorted(r["sample_id"] for r in rows)[:predictions]),
    )
    log(f"[evaluate] {choice.uri} on {len(rows)} {split} images ...")
    folder = layout.evaluation(split, choice.label)
    score = score_to_folder(job, rows, split, folder, data, log, "[evaluate]")
    fields = score.fields(split, data.classes)
    log(format_class_table(fields, data.classes, f"Per-class IoU %, {split}, {choice.label}"))
    log(
        f"[evaluate] {split} mIoU {100 * fields[f'{split}/miou']:.1f}, pixel accuracy "
        f"{100 * fields[f'{split}/pixel_acc']:.1f}, {len(rows)} images in {score.seconds:.1f}s. "
        f"Scores, confusion.png and {len(score.labels)} predictions in {folder}/"
    )
    return score, folder


def evaluate_command(
    cfg: ExperimentConfig, checkpoint: str | None, split: str, predictions: int, address
) -> int:
    if not checkpoint:
        print("error: evaluate needs --checkpoint <round | last | file>", file=sys.stderr)
        return 2
    from s4al_ray.data.folder import DatasetError
    from s4al_ray.runtime import worker_storage_errors
    from s4al_ray.storage import StorageError

    try:
        with worker_storage_errors():
            evaluate_checkpoint(cfg, checkpoint, split, predictions, address)
    except (ConfigError, DatasetError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
