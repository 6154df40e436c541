"""Student training, the worker side: what every Ray Train worker runs.

The driver builds one :class:`StudentJob` per round (``jobs.student_job``; no closures over big
objects) and starts the workers (``student_trainer.fit_student``); every worker runs
:func:`train_loop` on it: joint mini-batches of labeled images and
pseudo-labeled pool images through one forward pass (batch norm sees both), cross-entropy + ReCo,
a checkpoint every epoch, and at the end a validation confusion matrix reduced across workers as
a sum.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass

import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint

from s4al_ray.config import ModelConfig, RecoConfig, TrainConfig
from s4al_ray.data.augment import strong_augment, weak_augment
from s4al_ray.data.mixing import mix_batch
from s4al_ray.data.train_inputs import read_train_inputs
from s4al_ray.data.training import (
    DecodeCache,
    LabeledImages,
    PoolImages,
    batch_to_device,
    epoch_batches,
    normalize,
    read_pseudo_labels,
)
from s4al_ray.evaluate import evaluate_items
from s4al_ray.losses.joint import joint_losses, reco_weight_at
from s4al_ray.mean_teacher import make_ema_teacher, mean_teacher_batch
from s4al_ray.model import model_from_config, unwrap
from s4al_ray.model.weights import load_checkpoint
from s4al_ray.region_maps import RegionMaps
from s4al_ray.storage import check_node_access

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class StudentJob:
    """Everything one round's training reads, built by ``jobs.student_job`` and read by the
    workers from this object only."""

    round: int
    seed: int
    num_classes: int
    crop: tuple[int, int]  # training crop (height, width)
    train: TrainConfig
    model: ModelConfig
    reco: RecoConfig
    loader_workers: int
    # The labeled, pool and val rows (pool: acquired regions, sampling weights) by reference:
    # each worker reads what it trains on (data/train_inputs.py), never the whole pool.
    inputs_uri: str
    num_labeled: int
    num_pool: int  # 0 in round 0 (no pseudo-labels yet)
    run_name: str  # Ray Train's run name: a rerun of the round resumes from its last epoch
    train_dir: str  # Ray Train's run storage
    checkpoint_uri: str  # where the round's student is published
    init_checkpoint: str | None = None  # the previous round's student (train.fresh_student off)
    # From round 1: the previous teacher pass, its thresholds and whether the pool is sampled
    # class-balanced (by the rows' weights).
    pseudo_uri: str | None = None
    thresholds: list[float] | None = None
    weighted_pool: bool = False
    regions: RegionMaps | None = None  # what an acquired region index means (the pool's)

    @property
    def use_pseudo_labels(self) -> bool:
        """The mean-teacher baseline labels pool batches online: its pool set carries only
        acquired ground truth, weakly augmented."""
        return self.train.pseudo_labels and self.train.method == "self_training"


def _seed(job: StudentJob, rank: int, epoch: int, stream: int = 0) -> int:
    """Every random stream is a function of (seed, round, rank, epoch): a run resumed at epoch e
    draws exactly the batches and augmentations an uninterrupted run would have drawn."""
    return ((job.seed * 1009 + job.round) * 1013 + rank) * 1019 + epoch * 7 + stream


@dataclass
class TrainingSets:
    labeled: LabeledImages
    labeled_batch: int
    pool: PoolImages | None = None
    pool_weights: list[float] | None = None


def build_datasets(job: StudentJob, rank: int = 0, world: int = 1) -> TrainingSets:
    """The labeled set and (from round 1, with pseudo-labels) worker ``rank``'s shard of the pool:
    its rows and their pseudo-labels only."""
    cache = DecodeCache()
    labeled = LabeledImages(read_train_inputs(job.inputs_uri, "labeled"), cache)
    use_pool = job.num_pool > 0 and job.pseudo_uri and job.train.pseudo_batch > 0
    if not use_pool:
        # Round 0 (no pseudo-labels yet) spends the whole batch on labeled images.
        return TrainingSets(labeled, job.train.labeled_batch + job.train.pseudo_batch)
    items = read_train_inputs(job.inputs_uri, "pool", rank, world)
    pseudo = read_pseudo_labels(job.pseudo_uri, {i["sample_id"] for i in items})
    pool = PoolImages(
        items,
        pseudo,
        job.thresholds,
        {i["sample_id"]: i["acquired"] for i in items if i["acquired"]},
        job.regions,
        cache=cache,
        pseudo_labels=job.use_pseudo_labels,
    )
    weights = [i["weight"] for i in items] if job.weighted_pool else None
    return TrainingSets(labeled, job.train.labeled_batch, pool, weights)


def epoch_streams(job: StudentJob, sets: TrainingSets, rank: int, epoch: int, device: torch.device):
    """Seed one epoch's randomness and open its batch streams: (generator for augmentation,
    mixing and ReCo, labeled batches, pool batches or None). Each stream is a function of
    (seed, round, rank, epoch), so a resumed epoch replays exactly."""
    steps, workers = job.train.steps_per_epoch, job.loader_workers
    torch.manual_seed(_seed(job, rank, epoch, 0))  # dropout
    generator = torch.Generator().manual_seed(_seed(job, rank, epoch, 1))
    pin = device.type == "cuda"  # page-locked batches copy to the GPU asynchronously
    labeled = epoch_batches(
        sets.labeled, sets.labeled_batch, steps, _seed(job, rank, epoch, 2), workers, pin_memory=pin
    )
    pool = (
        None
        if sets.pool is None
        else epoch_batches(
            sets.pool,
            job.train.pseudo_batch,
            steps,
            _seed(job, rank, epoch, 5),
            workers,
            sets.pool_weights,
            pin_memory=pin,
        )
    )
    return generator, labeled, pool


def _poly_lr(optimizer, base_lr: float, it: int, total: int, power: float) -> float:
    factor = (1.0 - it / max(total, 1)) ** power
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_mult", 1.0) * factor
    return base_lr * factor


def augment_batches(job: StudentJob, batch_l, batch_u, device, generator, ema=None):
    """The loader's batches on ``device``, augmented there: labeled weakly, pool strongly (weakly
    with ``train.strong_aug`` off; the mean teacher's ``ema`` labels the weak view, then strongly
    augments it), then mixed. Draws from ``generator`` in that fixed order (ReCo's follow in the
    loss), so they depend on the epoch's seed and its batches only."""
    images_l, masks_l, sizes_l = batch_to_device(batch_l, device)
    labeled = weak_augment(images_l, masks_l, job.crop, generator, sizes_l)
    if batch_u is None:
        return labeled, None
    images_u, masks_u, sizes_u = batch_to_device(batch_u, device)
    if ema is not None:
        weak = weak_augment(images_u, masks_u, job.crop, generator, sizes_u)
        pool = mean_teacher_batch(ema, *weak, job.thresholds, job.crop, generator)
    elif job.train.strong_aug:
        pool = strong_augment(images_u, masks_u, job.crop, generator, sizes_u)
    else:
        pool = weak_augment(images_u, masks_u, job.crop, generator, sizes_u)
    return labeled, mix_batch(*pool, job.train.mix, generator)


def run_step(job: StudentJob, epoch: int, step: int) -> int:
    """Optimiser steps before this one in the run: a continued student counts every earlier
    round's (each round trains the same number of steps)."""
    per_round = job.train.epochs * job.train.steps_per_epoch
    done = 0 if job.train.fresh_student else job.round * per_round
    return done + epoch * job.train.steps_per_epoch + step


def _step_losses(
    model, job: StudentJob, batch_l, batch_u, generator, reco_weight: float
) -> dict[str, torch.Tensor]:
    """The joint losses of augmented pairs already on the device (``augment_batches``)."""
    pairs = [batch_l] if batch_u is None else [batch_l, batch_u]
    x, y = (torch.cat(parts) for parts in zip(*pairs))  # images, targets
    out = model(normalize(x), with_embedding=reco_weight > 0)
    n_labeled = batch_l[0].shape[0]
    return joint_losses(out, y, n_labeled, job.train, job.reco, generator, reco_weight)


def train_step(
    model,
    optimizer,
    job: StudentJob,
    batch_l,
    batch_u,
    device,
    generator,
    ema=None,
    use_amp: bool = False,
    reco_weight: float | None = None,
) -> dict[str, float]:
    """One optimiser step on a joint batch of loader batches (``collate_decoded``), augmented on
    ``device`` first (``augment_batches``); with ``ema`` (the mean-teacher baseline) the EMA
    teacher labels the pool batch and then follows the student. ``reco_weight``: the step's
    (``losses.joint.reco_weight_at``; default ``train.reco_weight``). Returns the losses."""
    reco_weight = job.train.reco_weight if reco_weight is None else reco_weight
    # Augmentation runs outside autocast: it resamples images in float32 either way.
    batch_l, batch_u = augment_batches(job, batch_l, batch_u, device, generator, ema)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        losses = _step_losses(model, job, batch_l, batch_u, generator, reco_weight)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    optimizer.step()
    if ema is not None:
        ema.update_parameters(unwrap(model))
    return {k: float(v.detach() if torch.is_tensor(v) else v) for k, v in losses.items()}


def train_epoch(
    model, optimizer, job: StudentJob, epoch: int, streams, device, ema=None, use_amp: bool = False
) -> tuple[dict[str, float], float]:
    """One epoch of ``train_step`` on the batches of ``epoch_streams``, with the poly learning
    rate counted over the whole round. Returns (mean of each loss, the last learning rate)."""
    train = job.train
    steps, total = train.steps_per_epoch, train.epochs * train.steps_per_epoch
    generator, labeled, pool = streams
    sums: dict[str, float] = {}
    lr = train.lr
    for step in range(steps):
        lr = _poly_lr(optimizer, train.lr, epoch * steps + step, total, train.poly_power)
        losses = train_step(
            model,
            optimizer,
            job,
            next(labeled),
            next(pool) if pool else None,
            device,
            generator,
            ema,
            use_amp,
            reco_weight_at(train, job.reco, run_step(job, epoch, step)),
        )
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + value
    return {key: value / steps for key, value in sums.items()}, lr


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        backend_tensor = tensor.to(ray.train.torch.get_device())
        dist.all_reduce(backend_tensor)
        return backend_tensor.cpu()
    return tensor


def _worker_nodes() -> list[str]:
    """The Ray node id of every rank (rank order): where this round's training ran."""
    mine = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return every


def init_model(job: StudentJob) -> torch.nn.Module:
    """The round's initial student: the configured weights, or the previous round's student."""
    init = job.init_checkpoint
    model = model_from_config(job.model, job.num_classes, "none" if init else None)
    if init:
        load_checkpoint(model, init)
    return model


def make_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.SGD:
    """SGD (Nesterov when there is momentum) over the model's parameter groups (heads at
    ``head_lr_mult``)."""
    return torch.optim.SGD(
        model.parameter_groups(train.head_lr_mult),
        lr=train.lr,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        nesterov=train.momentum > 0,
    )


def _report(metrics: dict, model, optimizer, epoch: int) -> None:
    """Report the epoch's metrics; rank 0 attaches the checkpoint. The upload is synchronous, so
    Ray has copied the checkpoint into run storage when ``report`` returns and the local staging
    directory can go: kept, it left a model file in the temp dir per epoch, round and trial."""
    name = f"epoch_{epoch:03d}"
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        return
    with tempfile.TemporaryDirectory(prefix="s4al-ckpt-") as directory:
        torch.save(
            {
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
            },
            os.path.join(directory, MODEL_FILE),
        )
        with open(os.path.join(directory, METRICS_FILE), "w") as handle:
            json.dump(metrics, handle)
        ray.train.report(
            metrics, checkpoint=Checkpoint.from_directory(directory), checkpoint_dir_name=name
        )


def _resume(model, optimizer) -> int:
    """Epoch to start from: after the last checkpoint of this round, if the worker group restarted
    or the driver reran the same round."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        state = torch.load(
            os.path.join(directory, MODEL_FILE), map_location="cpu", weights_only=True
        )
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"]) + 1


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker; ``config`` is ``{"job": StudentJob}``."""
    job: StudentJob = config["job"]
    train = job.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(train.cpus_per_worker)
    check_node_access(job.inputs_uri)  # a node without S3 access fails here, by name
    torch.manual_seed(job.seed)  # identical initial weights on every rank and every rerun
    device = ray.train.torch.get_device()
    model = init_model(job)
    if train.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer(unwrap(model), train)
    start_epoch = _resume(model, optimizer)
    sets = build_datasets(job, rank, world)
    ema = make_ema_teacher(unwrap(model), train, sets.pool is not None)
    use_amp = train.amp and device.type == "cuda"
    for epoch in range(start_epoch, train.epochs):
        model.train()
        streams = epoch_streams(job, sets, rank, epoch, device)
        started = time.perf_counter()  # the loop alone: what benchmarks compare with plain PyTorch
        losses, lr = train_epoch(model, optimizer, job, epoch, streams, device, ema, use_amp)
        metrics = {f"train/loss_{k}": v for k, v in losses.items()}
        metrics.update(
            {"epoch": epoch, "train/lr": lr, "train/seconds": time.perf_counter() - started}
        )
        if epoch == train.epochs - 1:
            val_items = read_train_inputs(job.inputs_uri, "val", rank, world)
            confusion = _all_reduce_sum(evaluate_items(model, val_items, job.num_classes, device))
            metrics["val/confusion"] = confusion.tolist()
        metrics["train/nodes"] = _worker_nodes()  # per epoch: an elastic group changes size
        _report(metrics, model, optimizer, epoch)
