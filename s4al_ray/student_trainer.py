"""Student training, the driver side: the only place a TorchTrainer is built.

One trainer per round, named from the experiment and round so that rerunning a round resumes
from its last epoch checkpoint; its group is fixed or elastic (``train.max_workers``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.util.queue import Queue

from s4al_ray import storage
from s4al_ray.config import TrainConfig
from s4al_ray.progress import TrainProgress
from s4al_ray.student import METRICS_FILE, MODEL_FILE, StudentJob, train_loop

# Ray Train's controller polls its workers every this many seconds (2 by default), and a fit
# waits for polls on its way in and out: 5 s of a 19 s fit that trains nothing on a 2-vCPU VM,
# 1 s at 0.25 (benchmarks/fixed_costs.py). A poll is one small actor call per worker. Ray Train
# reads it from the driver's environment and hands it on to the controller; a value already
# set there wins.
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_S = "0.25"


@dataclass(frozen=True)
class StudentResult:
    checkpoint_uri: str  # the round's model file (``{"model": state_dict, ...}``)
    metrics: dict


def _checkpoint_uri(checkpoint: Checkpoint) -> str:
    import pyarrow.fs as pafs

    if isinstance(checkpoint.filesystem, pafs.S3FileSystem):
        return "s3://" + checkpoint.path
    return checkpoint.path


def fit_student(job: StudentJob, progress: Queue | None = None) -> StudentResult:
    """Train one round's student with a TorchTrainer and publish its weights to
    ``job.checkpoint_uri``. Rerunning the same round resumes from its last epoch checkpoint
    because the run name is derived from the experiment and round."""
    train = job.train
    storage_path, storage_fs = storage.ray_storage(job.train_dir)
    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_S)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"job": job},
        scaling_config=_scaling(train),
        run_config=RunConfig(
            name=job.run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[TrainProgress(progress)] if progress is not None else None,
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"round {job.round}: training produced no checkpoint")
    source = _checkpoint_uri(result.checkpoint)
    metrics = json.loads(storage.read_text(storage.join(source, METRICS_FILE)))
    storage.write_bytes(job.checkpoint_uri, storage.read_bytes(storage.join(source, MODEL_FILE)))
    return StudentResult(job.checkpoint_uri, metrics)


def _scaling(train: TrainConfig) -> ScalingConfig:
    """A fixed group of ``num_workers``, or an elastic one (``max_workers``): Ray Train starts
    with what the cluster can place and restarts the group at a new size from the last epoch
    checkpoint when nodes come or go (checked every ``elastic_check_s``)."""
    elastic = train.max_workers > train.num_workers
    return ScalingConfig(
        num_workers=(train.num_workers, train.max_workers) if elastic else train.num_workers,
        use_gpu=train.use_gpu,
        resources_per_worker=_worker_resources(train),
        elastic_resize_monitor_interval_s=train.elastic_check_s,
    )


def _worker_resources(train: TrainConfig) -> dict:
    resources = {"CPU": train.cpus_per_worker}
    if train.use_gpu:
        resources["GPU"] = 1
    return resources
