"""The round loop (driver): train the student, run the teacher, acquire regions, record.

Every stage is resumable: a round with a record is never redone; training resumes from its last
epoch checkpoint; the teacher pass is redone idempotently (its output replaced); a commit repeated
with the same selection is a no-op in the pool actor.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import ray

from s4al_ray import storage
from s4al_ray.acquisition import inverse_frequency_weights, select_regions
from s4al_ray.config import ConfigError, ExperimentConfig, to_dict, to_yaml, read_yaml
from s4al_ray.data.check import require_clean
from s4al_ray.data.io import load_mask
from s4al_ray.data.manifest import DatasetInfo
from s4al_ray.data.registry import load_dataset
from s4al_ray.evaluate import iou_per_class, mean_iou, pixel_accuracy
from s4al_ray.pool.actor import get_pool_actor
from s4al_ray.pool.manual import AwaitingAnnotation, label_uri, write_query_package
from s4al_ray.pool.oracle import class_histogram
from s4al_ray.pool.state import PoolState
from s4al_ray.report import format_round_table, format_class_table, write_rounds_csv
from s4al_ray.runtime import ClusterResources, check_fits, teacher_actors
from s4al_ray.runtime import resources as cluster_resources
from s4al_ray.student import fit_student
from s4al_ray.data.training import repeat_factors
from s4al_ray.teacher import (class_thresholds, read_teacher_output, run_teacher, uses_tasks,
                              warm_task_workers)

RUN_FORMAT = 1
# Keys that may change between a run and its resumption without mixing incompatible results.
RESUMABLE_KEYS = ("ray.", "train.num_workers", "train.cpus_per_worker", "train.use_gpu",
                  "teacher.num_actors", "teacher.cpus_per_actor", "teacher.batch_size",
                  "loop.rounds", "data.loader_workers", "storage", "s3_endpoint")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass
class Experiment:
    cfg: ExperimentConfig
    resources: ClusterResources | None = None  # filled from the connected cluster when None
    log: Callable[[str], None] = print
    # Called with (record, resumed) after every round; resumed=True for a round found finished.
    on_record: Callable[[dict, bool], None] | None = None
    run_dir: str = ""
    data: DatasetInfo | None = None
    records: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_dir = storage.join(storage.absolute(self.cfg.storage), self.cfg.name)
        self.started = time.perf_counter()

    # -- set-up --------------------------------------------------------------------------------
    def _uri(self, *parts: str) -> str:
        return storage.join(self.run_dir, *parts)

    def _check_run_dir(self) -> None:
        """A rerun must use a compatible config; otherwise results would silently mix."""
        storage.check_writable(self.run_dir)
        marker = self._uri("s4al_run.json")
        if storage.exists(marker):
            fmt = json.loads(storage.read_text(marker)).get("format")
            if fmt != RUN_FORMAT:
                raise ConfigError(f"{self.run_dir} was written by an incompatible s4al-ray "
                                  f"(format {fmt}, expected {RUN_FORMAT}); use another name=")
            saved = _flatten(read_yaml(self._uri("config.yaml")))
            now = _flatten(to_dict(self.cfg))
            changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k)
                             and not k.startswith(RESUMABLE_KEYS))
            if changed:
                detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
                raise ConfigError(
                    f"{self.run_dir} holds a run with a different config ({detail}). Resume it "
                    "with the same settings, or start a new experiment with name=<new name>")
        storage.write_text(self._uri("config.yaml"), to_yaml(self.cfg))
        storage.write_text(marker, json.dumps({"format": RUN_FORMAT}))

    def _initial_state(self) -> PoolState:
        train = self.data.rows("train")
        rng = np.random.default_rng(self.cfg.seed)
        count = int(round(self.cfg.data.initial_labeled_frac * len(train)))
        # At least one labeled image; all of them only when asked (the fully supervised reference).
        count = max(count, 1) if self.cfg.data.initial_labeled_frac >= 1.0 else \
            min(max(count, 1), len(train) - 1)
        labeled = sorted(train[i]["sample_id"] for i in rng.permutation(len(train))[:count])
        by_id = {r["sample_id"]: r for r in train}
        counts = sum(class_histogram(load_mask(by_id[s]["mask_uri"]), self.data.num_classes)
                     for s in labeled)
        return PoolState(region_size=self.cfg.acquisition.region_size,
                         num_classes=self.data.num_classes,
                         sizes={r["sample_id"]: [r["height"], r["width"]] for r in train},
                         labeled=labeled, initial_class_pixels=np.asarray(counts).tolist())

    def preflight(self) -> None:
        """Everything that can fail on bad input, before any Ray work: storage reachable and
        writable, a compatible run directory, a dataset without errors."""
        if self.data is not None:
            return
        self._check_run_dir()
        t0 = time.perf_counter()
        self.data = load_dataset(self.cfg.data, self.cfg.seed)
        require_clean(self.data, self.log)  # bad files fail here, by name, not mid-round
        if not self.data.rows("train") or not self.data.rows("val"):
            raise ConfigError(f"{self.cfg.data.root}: the dataset needs train and val samples")
        self._check_region_size()
        self.log(f"[data] {len(self.data.rows('train'))} train, {len(self.data.rows('val'))} val "
                 f"images, {self.data.num_classes} classes  ({time.perf_counter() - t0:.1f}s)")

    def prepare(self) -> None:
        self.preflight()
        check_fits(self.cfg, self.resources)
        masks = {r["sample_id"]: r["mask_uri"] for r in self.data.rows("train")}
        self.pool = get_pool_actor(self.cfg.name, self.run_dir, self._initial_state(), masks)
        self.state = PoolState.from_json(ray.get(self.pool.snapshot.remote()))
        if self._teacher_tasks() and self.cfg.loop.rounds > 1:
            warm_task_workers(teacher_actors(self.cfg, self.resources))
        self.log(f"[pool] {len(self.state.labeled)} labeled images, {len(self.state.pool_ids)} "
                 f"pool images, {100 * self.state.labeled_frac:.2f}% of pixels labeled")

    def _check_region_size(self) -> None:
        smallest = min(min(r["height"], r["width"]) for r in self.data.rows("train"))
        if self.cfg.acquisition.region_size > smallest:
            raise ConfigError(f"acquisition.region_size ({self.cfg.acquisition.region_size}) is "
                              f"larger than the smallest train image side ({smallest} px)")

    # -- one round -----------------------------------------------------------------------------
    def _record_uri(self, r: int) -> str:
        return self._uri("rounds", f"round_{r:03d}.json")

    def _teacher_uri(self, r: int) -> str:
        return self._uri("teacher", f"round_{r:03d}")

    def _loop_config(self, r: int, state: PoolState) -> dict:
        cfg = self.cfg
        previous = self.records[-1] if self.records else None
        by_id = {row["sample_id"]: row for row in self.data.rows("train")}
        height = cfg.data.crop_height or min(row["height"] for row in by_id.values())
        width = cfg.data.crop_width or min(row["width"] for row in by_id.values())
        init = None
        if r > 0 and not cfg.train.fresh_student:
            init = self._uri("checkpoints", f"round_{r - 1:03d}.pt")
        return {
            **{k: to_dict(getattr(cfg, k)) for k in ("train", "data", "model", "reco")},
            "seed": cfg.seed, "round": r, "num_classes": self.data.num_classes,
            "threads": cfg.train.cpus_per_worker, "crop": [height, width],
            "labeled_items": [by_id[s] for s in state.labeled],
            "pool_items": [self._pool_item(by_id[s], state) for s in state.pool_ids]
                          if previous else [],
            "pseudo_uri": self._teacher_uri(r - 1) if previous else None,
            "thresholds": previous["teacher/thresholds"] if previous else None,
            "pool_weights": previous.get("teacher/pool_weights") if previous else None,
            # The mean-teacher baseline labels pool batches online: its pool set carries only
            # acquired ground truth, weakly augmented.
            "use_pseudo_labels": cfg.train.pseudo_labels and cfg.train.method == "self_training",
            "acquired": state.acquired, "region_size": state.region_size,
            "val_items": self.data.rows("val"), "init_checkpoint": init,
        }

    def _pool_item(self, item: dict, state: PoolState) -> dict:
        """A pool image as the student sees it: with a manual oracle, acquired labels come from
        the annotators' files, not from the dataset's masks."""
        if self.cfg.oracle == "manual" and item["sample_id"] in state.acquired:
            return {**item, "mask_uri": label_uri(self.run_dir, item["sample_id"])}
        return item

    def _train(self, r: int, state: PoolState, record: dict) -> str:
        published = self._uri("checkpoints", f"round_{r:03d}.pt")
        metrics_uri = self._uri("checkpoints", f"round_{r:03d}.json")
        t0 = time.perf_counter()
        if storage.exists(published) and storage.exists(metrics_uri):
            metrics = json.loads(storage.read_text(metrics_uri))  # finished before a restart
            self.log(f"[round {r}] train   reusing the finished student {published}")
        else:
            self.log(f"[round {r}] train   {self.cfg.train.num_workers} worker(s), "
                     f"{self.cfg.train.epochs}x{self.cfg.train.steps_per_epoch} steps, "
                     f"labeled {100 * state.labeled_frac:.2f}% of pixels ...")
            result = fit_student(self._loop_config(r, state), self.run_dir, self.cfg.name)
            metrics = result.metrics
            storage.write_text(metrics_uri, json.dumps(metrics))
        confusion = np.asarray(metrics["val/confusion"])
        ious = iou_per_class(confusion)
        record.update({
            "val/miou": mean_iou(confusion), "val/pixel_acc": pixel_accuracy(confusion),
            **{f"val/iou/{c}": (None if np.isnan(v) else float(v))
               for c, v in zip(self.data.classes, ious)},
            "train/loss": metrics.get("train/loss_total"),
            "time/train_s": time.perf_counter() - t0,
        })
        self.log(f"[round {r}] train   done in {record['time/train_s']:.1f}s: "
                 f"loss {record['train/loss']:.3f}, val mIoU {100 * record['val/miou']:.1f}")
        return published

    def _teach(self, r: int, state: PoolState, checkpoint: str, record: dict) -> None:
        """Teacher pass, or its saved summary when it already finished (e.g. before a stop
        for annotation); a pass cut short leaves no summary and is redone from scratch."""
        summary_uri = self._uri("teacher", f"round_{r:03d}.json")
        if storage.exists(summary_uri):
            record.update(json.loads(storage.read_text(summary_uri)))
            self.scores = read_teacher_output(self._teacher_uri(r)).scores
            self.log(f"[round {r}] teacher reusing the finished pass {self._teacher_uri(r)}")
            return
        before = set(record)
        self._run_teacher(r, state, checkpoint, record)
        storage.write_text(summary_uri, json.dumps({k: record[k] for k in set(record) - before}))

    def _teacher_tasks(self) -> bool:
        return uses_tasks(self.cfg.teacher.reuse_workers, self.cfg.train.use_gpu)

    def _run_teacher(self, r: int, state: PoolState, checkpoint: str, record: dict) -> None:
        cfg = self.cfg
        num_actors = teacher_actors(cfg, self.resources)
        self.log(f"[round {r}] teacher Ray Data over {len(state.pool_ids)} pool images, "
                 f"{num_actors} {'task worker(s)' if self._teacher_tasks() else 'actor(s)'} ...")
        by_id = {row["sample_id"]: row for row in self.data.rows("train")}
        acquired = state.acquired
        rows = [{**by_id[s], "acquired": acquired.get(s, [])} for s in state.pool_ids]
        teacher_cfg = {
            "model": to_dict(cfg.model), "num_classes": self.data.num_classes, "seed": cfg.seed + r,
            "checkpoint_uri": checkpoint, "checkpoint_stamp": storage.stamp(checkpoint),
            "reuse_workers": cfg.teacher.reuse_workers, "scales": cfg.teacher.scales,
            "flip": cfg.teacher.flip,
            "use_gpu": cfg.train.use_gpu, "threads": cfg.teacher.cpus_per_actor,
            "cpus_per_actor": cfg.teacher.cpus_per_actor, "region_size": state.region_size,
            "function": cfg.acquisition.function,
            "class_weights": inverse_frequency_weights(state.labeled_class_pixels).tolist(),
        }
        seconds = run_teacher(rows, teacher_cfg, self._teacher_uri(r), num_actors,
                              cfg.teacher.batch_size)
        output = read_teacher_output(self._teacher_uri(r))
        self.scores, hist = output.scores, output.hist
        t = cfg.teacher
        thresholds = class_thresholds(hist, t.threshold, t.class_aware, t.class_quantile)
        kept = _kept_fraction(hist, thresholds)
        if cfg.train.class_balanced:
            record["teacher/pool_weights"] = repeat_factors(output.class_pixels,
                                                            cfg.train.balance_threshold)
        record.update({"teacher/thresholds": thresholds, "teacher/kept_frac": kept,
                       "time/teacher_s": seconds,
                       "teacher/images_per_s": len(rows) / max(seconds, 1e-9)})
        self.log(f"[round {r}] teacher done in {seconds:.1f}s "
                 f"({record['teacher/images_per_s']:.1f} img/s), "
                 f"{100 * kept:.1f}% of pool pixels kept as pseudo-labels")

    def _acquire(self, r: int, state: PoolState, record: dict) -> None:
        acq = self.cfg.acquisition
        total = state.total_pixels
        budget = min(int(acq.round_budget * total),
                     int(acq.total_budget * total) - state.labeled_pixels)
        t0 = time.perf_counter()
        entry = PoolState.from_json(ray.get(self.pool.snapshot.remote())).entry(r)
        if entry is None:  # not committed yet (a manual import commits before the rerun)
            grids = {s: state.grid(s) for s in self.scores}
            selection = select_regions(self.scores, grids, state.acquired, mode=acq.mode,
                                       budget_pixels=max(budget, 0), top_k=acq.top_k,
                                       exclude_border=acq.exclude_border)
            if self.cfg.oracle == "manual":
                by_id = {row["sample_id"]: row for row in self.data.rows("train")}
                package = write_query_package(self.run_dir, r, selection, state, by_id,
                                              self.data.classes)
                raise AwaitingAnnotation(r, package)
            entry = ray.get(self.pool.commit.remote(r, selection))
        record.update({"pool/acquired_pixels": entry["pixels"],
                       "pool/acquired_regions": entry["regions"],
                       "time/acquire_s": time.perf_counter() - t0})
        self.log(f"[round {r}] acquire {entry['regions']} regions in {entry['images']} images, "
                 f"{entry['pixels']} px ({100 * entry['pixels'] / total:.2f}% of train pixels)")

    def run_round(self, r: int) -> dict:
        state = PoolState.from_json(ray.get(self.pool.snapshot.remote())).before(r)
        record = {"round": r, "pool/labeled_frac": state.labeled_frac,
                  "pool/labeled_pixels": state.labeled_pixels, "pool/acquired_pixels": 0,
                  "pool/acquired_regions": 0, "time/teacher_s": 0.0, "time/acquire_s": 0.0}
        checkpoint = self._train(r, state, record)
        if r < self.cfg.loop.rounds - 1 and state.pool_ids:
            self._teach(r, state, checkpoint, record)
            self._acquire(r, state, record)
        record["time/round_s"] = sum(record[k] for k in
                                     ("time/train_s", "time/teacher_s", "time/acquire_s"))
        storage.write_text(self._record_uri(r), json.dumps(record, indent=1))
        from s4al_ray.visual_report import eta_line, write_round_report

        records = [*self.records, record]
        try:  # the report is a view of results already saved: drawing it never fails the run
            t0 = time.perf_counter()
            after = PoolState.from_json(ray.get(self.pool.snapshot.remote())).before(r + 1)
            write_round_report(self.run_dir, records, self.data, after, r)
            self.log(f"[round {r}] report  {storage.join(self.run_dir, 'report', 'report.html')} "
                     f"({time.perf_counter() - t0:.1f}s)")
        except Exception as err:  # noqa: BLE001
            self.log(f"[round {r}] warning: report not drawn ({type(err).__name__}: {err})")
        elapsed = time.perf_counter() - self.started
        self.log(f"[round {r}] {eta_line(records, self.cfg.loop.rounds, elapsed)}")
        return record

    # -- the loop ------------------------------------------------------------------------------
    def _load_record(self, r: int) -> dict | None:
        """A finished round's record; a damaged one means the round is redone (idempotently)."""
        uri = self._record_uri(r)
        if not storage.exists(uri):
            return None
        try:
            return json.loads(storage.read_text(uri))
        except ValueError:
            self.log(f"WARNING: {uri} is damaged; round {r} is redone")
            return None

    def _explain_query(self, waiting: AwaitingAnnotation) -> None:
        self.log(f"[round {waiting.round_index}] acquire: query package for annotators written to "
                 f"{waiting.package}/ (query.json, images/, README.txt)")
        self.log("Stopped: annotate the requested regions, then run\n"
                 "  python run.py annotate --import <folder of masks> <same config and options>\n"
                 "  python run.py <same config and options>      # continues this experiment")

    def _notify(self, record: dict, resumed: bool) -> None:
        if self.on_record is not None:
            self.on_record(record, resumed)

    def run(self) -> list[dict]:
        if self.resources is None:
            self.resources = cluster_resources()
        self.prepare()
        for r in range(self.cfg.loop.rounds):
            done = self._load_record(r)
            if done is not None:
                self.records.append(done)
                self.log(f"[round {r}] already done (record found), skipped")
                self._notify(self.records[-1], resumed=True)
                continue
            try:
                self.records.append(self.run_round(r))
            except AwaitingAnnotation as waiting:
                self._explain_query(waiting)
                return self.records
            self._notify(self.records[-1], resumed=False)
            write_rounds_csv(self.records, self._uri("rounds.csv"))
            self.log(format_round_table(self.records))
        write_rounds_csv(self.records, self._uri("rounds.csv"))
        self.log("\n" + format_class_table(self.records[-1], self.data.classes))
        self.log(f"\nDone in {time.perf_counter() - self.started:.0f}s. Results in {self.run_dir}/")
        return self.records


def _kept_fraction(hist: np.ndarray, thresholds: list[float]) -> float:
    """Share of pool pixels whose confidence passes their class threshold (from the histogram)."""
    bins = hist.shape[1]
    edges = np.arange(bins) / bins
    kept = sum(hist[c][edges >= thresholds[c] - 1e-9].sum() for c in range(hist.shape[0]))
    return float(kept / max(hist.sum(), 1))
