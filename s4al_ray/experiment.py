"""The round loop (driver): train the student, run the teacher, acquire regions, record.

One round passes its values explicitly (``run_round``): the pool state is fetched once (not at
all while the driver's copy is current), the student's checkpoint goes to the teacher, the
teacher blocks' candidates to the selection, and the teacher's summary (thresholds, pool
weights) is saved beside its pass for the next round's student.

Every stage is resumable: a round with a record is never redone; training resumes from its last
epoch checkpoint; a finished teacher pass is reused, one cut short redone; a commit repeated with
the same selection is a no-op in the pool actor.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import ray

from s4al_ray import storage
from s4al_ray.acquisition import Candidates, select
from s4al_ray.config import ConfigError, ExperimentConfig, to_yaml
from s4al_ray.data.check import require_clean
from s4al_ray.data.manifest import DatasetInfo
from s4al_ray.data.registry import load_dataset
from s4al_ray.evaluate import split_fields
from s4al_ray.jobs import (
    TeacherSummary,
    acquisition_budget,
    initial_pool_state,
    scoring_job,
    student_job,
    summarize_teacher,
    teacher_job,
    teacher_rows,
)
from s4al_ray.layout import RUN_FORMAT, RunLayout
from s4al_ray.pool import manual
from s4al_ray.pool.actor import get_pool_actor, pool_snapshot
from s4al_ray.pool.manual import AwaitingAnnotation, write_query_package
from s4al_ray.pool.state import PoolState
from s4al_ray.progress import StageProgress
from s4al_ray.region_maps import check_region_size, run_regions
from s4al_ray.report import (
    eta_line,
    format_class_table,
    format_round_table,
    stage_estimate,
    write_rounds_csv,
)
from s4al_ray.resume import check_resumable
from s4al_ray.run_lock import hold_run_lock
from s4al_ray.runtime import ClusterResources, check_fits, teacher_workers, worker_storage_errors
from s4al_ray.runtime import resources as cluster_resources
from s4al_ray.scoring import score_to_folder
from s4al_ray.student_trainer import StudentResult, fit_student
from s4al_ray.teacher import read_teacher_output, run_teacher, uses_tasks, warm_task_workers
from s4al_ray.tracking import TrackingParent, check_trackers, make_trackers


@dataclass(frozen=True)
class TeacherResult:
    candidates: Candidates  # the regions this round's selection may take (merged blocks)
    summary: TeacherSummary


@dataclass
class Experiment:
    cfg: ExperimentConfig
    # Fixed resources (a sweep trial's share of the cluster); None = the connected cluster as it
    # is before each stage, which an autoscaler grows and shrinks while the experiment runs.
    resources: ClusterResources | None = None
    log: Callable[[str], None] = print
    # Called with (record, resumed) after every round; resumed=True for a round found finished.
    on_record: Callable[[dict, bool], None] | None = None
    data: DatasetInfo | None = None
    records: list[dict] = field(default_factory=list)
    trackers: list = field(default_factory=list)  # tracking.make_trackers, set by run()
    tracking_parent: TrackingParent | None = None  # a sweep trial's parent in the trackers
    committed: PoolState | None = None  # last seen committed (pool_snapshot's ``known``)

    def __post_init__(self) -> None:
        self.layout = RunLayout.of(self.cfg.storage, self.cfg.name)
        self.started = time.perf_counter()

    @property
    def run_dir(self) -> str:
        return self.layout.run_dir

    # -- set-up
    def preflight(self, record: bool = True) -> None:
        """Everything that can fail on bad input, before any Ray work: storage reachable and
        writable, a compatible run directory, a dataset without errors. Nothing is written to
        the run directory until every check has passed (and nothing at all without
        ``record``: a dry run)."""
        if self.data is not None:
            return
        check_resumable(self.layout, self.cfg)
        t0 = time.perf_counter()
        self.data = load_dataset(self.cfg.data, self.cfg.seed)
        require_clean(self.data, self.log)  # bad files fail here, by name, not mid-round
        if not self.data.rows("train") or not self.data.rows("val"):
            raise ConfigError(f"{self.cfg.data.root}: the dataset needs train and val samples")
        check_region_size(self.cfg.acquisition, self.data.rows("train"))
        check_trackers(self.cfg)
        manual.check_tool_settings(self.cfg.annotation, self.cfg.data.root)
        if record:
            storage.write_text(self.layout.config, to_yaml(self.cfg))
            storage.write_text(self.layout.marker, json.dumps({"format": RUN_FORMAT}))
        self.log(
            f"[data] {len(self.data.rows('train'))} train, {len(self.data.rows('val'))} val "
            f"images, {self.data.num_classes} classes  ({time.perf_counter() - t0:.1f}s)"
        )

    def prepare(self) -> None:
        self.preflight()
        res = self.cluster()
        check_fits(self.cfg, res)
        train = self.data.rows("train")
        masks = {r["sample_id"]: r["mask_uri"] for r in train}
        begun = storage.exists(self.layout.pool_head)
        maps, segments = run_regions(
            self.cfg.acquisition, self.layout.superpixels_dir, train, self.log, begun
        )
        initial = initial_pool_state(self.cfg, self.data, maps, segments)
        self.pool = get_pool_actor(self.cfg.name, self.layout, initial, masks)
        state = self.committed = pool_snapshot(self.pool, known=initial)
        if self._teacher_tasks() and self.cfg.loop.rounds > 1:
            present = max(1, res.cpus // self.cfg.teacher.cpus_per_actor)
            warm_task_workers(min(teacher_workers(self.cfg, res).largest, present))
        self.log(
            f"[pool] {len(state.labeled)} labeled images, {len(state.pool_ids)} "
            f"pool images, {100 * state.labeled_frac:.2f}% of pixels labeled"
        )

    def cluster(self) -> ClusterResources:
        """What the next stage is sized for (see ``resources``)."""
        return self.resources or cluster_resources()

    def _teacher_tasks(self) -> bool:
        return uses_tasks(self.cfg.teacher.reuse_workers, self.cfg.train.use_gpu)

    # -- the stages of one round
    def train(self, r: int, state: PoolState) -> StudentResult:
        """Round ``r``'s student, or the published one when it finished before a restart."""
        layout = self.layout
        if storage.exists(layout.checkpoint(r)) and storage.exists(layout.train_metrics(r)):
            self.log(f"[round {r}] train   reusing the finished student {layout.checkpoint(r)}")
            return StudentResult(
                layout.checkpoint(r), json.loads(storage.read_text(layout.train_metrics(r)))
            )
        self.log(
            f"[round {r}] train   {self.cfg.train.num_workers} worker(s), "
            f"{self.cfg.train.epochs}x{self.cfg.train.steps_per_epoch} steps, "
            f"labeled {100 * state.labeled_frac:.2f}% of pixels"
            f"{stage_estimate(self.records, 'time/train_s')} ..."
        )
        previous = TeacherSummary.load(layout.teacher_summary(r - 1)) if r > 0 else None
        job = student_job(self.cfg, self.data, state, layout, r, previous)
        train = self.cfg.train
        prefix = f"[round {r}] train  "
        board = StageProgress(
            prefix,
            train.epochs,
            "epochs",
            self.log,
            steps_per_epoch=train.steps_per_epoch,
            on_epoch=lambda report: [t.epoch(r, report) for t in self.trackers],
        )
        with board as queue:
            result = fit_student(job, queue)
        storage.write_text(layout.train_metrics(r), json.dumps(result.metrics))
        return result

    def teach(self, r: int, state: PoolState, checkpoint: str) -> TeacherResult:
        """Teacher pass, or the finished one (e.g. before a stop for annotation); a pass cut
        short leaves no summary and is redone from scratch."""
        summary = TeacherSummary.load(self.layout.teacher_summary(r))
        output_uri = self.layout.teacher(r)
        res = self.cluster()
        workers = teacher_workers(self.cfg, res)
        job = teacher_job(self.cfg, self.data, state, r, checkpoint, workers)
        if summary is not None:
            self.log(f"[round {r}] teacher reusing the finished pass {output_uri}")
            output = read_teacher_output(output_uri, self.data.num_classes, job)
            return TeacherResult(output.candidates, summary)
        if self._teacher_tasks():
            size = f"{workers.largest} task worker(s)"
        elif workers.smallest < workers.largest:
            size = f"{workers.smallest}-{workers.largest} actors (grows with the cluster)"
        else:
            size = f"{workers.largest} actor(s)"
        self.log(
            f"[round {r}] teacher Ray Data over {len(state.pool_ids)} pool images, {size}"
            + (f" on a {res.nodes}-node cluster" if res.nodes > 1 else "")
            + f"{stage_estimate(self.records, 'time/teacher_s')} ..."
        )
        rows = teacher_rows(self.data, state)
        with StageProgress(f"[round {r}] teacher", len(rows), "images", self.log) as queue:
            seconds = run_teacher(job, rows, output_uri, queue)
        output = read_teacher_output(output_uri, self.data.num_classes, job)
        summary = summarize_teacher(self.cfg, output, seconds, len(rows))
        summary.save(self.layout.teacher_summary(r))
        self.log(
            f"[round {r}] teacher done in {seconds:.1f}s ({summary.images_per_s:.1f} "
            f"img/s), {100 * summary.kept_frac:.1f}% of pool pixels kept as pseudo-labels"
        )
        return TeacherResult(output.candidates, summary)

    def score_test(self, r: int, checkpoint: str) -> dict:
        """The last round's student on the test split: the record's ``test/...`` fields, apart
        from val's (which the rounds compare), files in ``evaluate/test_round_XXX/``."""
        rows, folder = self.data.rows("test"), self.layout.round_evaluation("test", r)
        job = scoring_job(
            self.cfg, self.data, checkpoint, teacher_workers(self.cfg, self.cluster())
        )
        self.log(f"[round {r}] test    scoring the student on {len(rows)} test images ...")
        prefix = f"[round {r}] test   "
        score = score_to_folder(job, rows, "test", folder, self.data, self.log, prefix)
        fields = score.fields("test", self.data.classes)
        miou = 100 * fields["test/miou"]
        self.log(f"{prefix} done in {score.seconds:.1f}s: test mIoU {miou:.1f} ({folder}/)")
        return {**fields, "time/test_s": score.seconds}

    def acquire(self, r: int, state: PoolState, candidates: Candidates) -> dict:
        """Select round ``r``'s regions from the teacher blocks' candidates and commit them;
        returns the ledger entry. A manual oracle writes the query package and stops instead."""
        acq = self.cfg.acquisition
        selection = select(
            candidates,
            state.pool_ids,
            mode=acq.mode,
            budget_pixels=acquisition_budget(self.cfg, state),
            top_k=acq.top_k,
            selection=acq.selection,
            shortlist=acq.diversity_shortlist,
            positions=state.pool_order,
        )
        if self.cfg.oracle == "manual":
            by_id = {row["sample_id"]: row for row in self.data.rows("train")}
            teacher = self.layout.teacher(r)  # the pass that ranked the regions: pre-annotations
            settings = self.cfg.annotation
            tool = manual.tool_package(settings, teacher, selection, self.data, self.cfg.name)
            package = write_query_package(
                self.layout, r, selection, state, by_id, self.data.classes, tool
            )
            raise AwaitingAnnotation(r, package)
        entry = ray.get(self.pool.commit.remote(r, selection, with_selection=False))
        return {**entry, "selection": selection}  # this one, rather than a copy sent back

    def run_round(self, r: int) -> dict:
        committed = self.committed = pool_snapshot(self.pool, known=self.committed)
        state = committed.before(r)
        record = {
            "round": r,
            "pool/labeled_frac": state.labeled_frac,
            "pool/labeled_pixels": state.labeled_pixels,
            "pool/acquired_pixels": 0,
            "pool/acquired_regions": 0,
            "time/teacher_s": 0.0,
            "time/acquire_s": 0.0,
        }
        t0 = time.perf_counter()
        with worker_storage_errors():
            student = self.train(r, state)
        record.update(self._student_fields(student.metrics))
        record["time/train_s"] = time.perf_counter() - t0
        self.log(
            f"[round {r}] train   done in {record['time/train_s']:.1f}s: "
            f"loss {record['train/loss']:.3f}, val mIoU {100 * record['val/miou']:.1f}"
        )
        if r == self.cfg.loop.rounds - 1 and self.data.rows("test"):
            with worker_storage_errors():
                record.update(self.score_test(r, student.checkpoint_uri))
        after = state
        if r < self.cfg.loop.rounds - 1 and state.pool_ids:
            with worker_storage_errors():
                teacher = self.teach(r, state, student.checkpoint_uri)
            record.update(teacher.summary.record_fields())
            t0 = time.perf_counter()
            # A manual import commits before the rerun that continues the round.
            entry = committed.entry(r) or self.acquire(r, state, teacher.candidates)
            record.update(
                {
                    "pool/acquired_pixels": entry["pixels"],
                    "pool/acquired_regions": entry["regions"],
                    "time/acquire_s": time.perf_counter() - t0,
                }
            )
            self.log(
                f"[round {r}] acquire {entry['regions']} regions in {entry['images']} "
                f"images, {entry['pixels']} px "
                f"({100 * entry['pixels'] / state.total_pixels:.2f}% of train pixels)"
            )
            after = self.committed = state.with_entry(entry)  # the actor's, unless r reran
        record["time/round_s"] = sum(
            record.get(k, 0.0)
            for k in ("time/train_s", "time/test_s", "time/teacher_s", "time/acquire_s")
        )
        storage.write_text(self.layout.record(r), json.dumps(record, indent=1))
        self._report(r, [*self.records, record], after)
        return record

    def _student_fields(self, metrics: dict) -> dict:
        return {
            **split_fields("val", np.asarray(metrics["val/confusion"]), self.data.classes),
            "train/loss": metrics.get("train/loss_total"),
            "train/nodes": metrics.get("train/nodes", []),  # the Ray node of each rank
        }

    def _report(self, r: int, records: list[dict], after: PoolState) -> None:
        from s4al_ray.visual_report import write_round_report  # matplotlib: only when drawing

        try:  # the report is a view of results already saved: drawing it never fails the run
            t0 = time.perf_counter()
            write_round_report(self.layout, records, self.data, after, r)
            self.log(
                f"[round {r}] report  {self.layout.report_file('report.html')} "
                f"({time.perf_counter() - t0:.1f}s)"
            )
        except Exception as err:  # noqa: BLE001
            self.log(f"[round {r}] warning: report not drawn ({type(err).__name__}: {err})")
        elapsed = time.perf_counter() - self.started
        self.log(f"[round {r}] {eta_line(records, self.cfg.loop.rounds, elapsed)}")

    # -- the loop
    def _ended_early(self, record: dict) -> bool:
        """A round recorded as the last one (no teacher pass, nothing acquired) that is no
        longer last: ``loop.rounds`` was raised on resume. Its student is reused."""
        r = int(record["round"])
        last = r == self.cfg.loop.rounds - 1
        return not last and "teacher/kept_frac" not in record and record["pool/labeled_frac"] < 1

    def _load_record(self, r: int) -> dict | None:
        """A finished round's record; a damaged one means the round is redone (idempotently)."""
        uri = self.layout.record(r)
        if not storage.exists(uri):
            return None
        try:
            return json.loads(storage.read_text(uri))
        except ValueError:
            self.log(f"WARNING: {uri} is damaged; round {r} is redone")
            return None

    def _explain_query(self, waiting: AwaitingAnnotation) -> None:
        for line in manual.query_instructions(waiting, self.cfg.annotation, self.cfg.name):
            self.log(line)

    def _notify(self, record: dict, resumed: bool) -> None:
        if self.on_record is not None:
            self.on_record(record, resumed)

    def run(self) -> list[dict]:
        self.preflight()  # before the lock: a failed check leaves the run directory untouched
        with hold_run_lock(self.layout, self.cfg.name):
            return self._run_rounds()

    def _run_rounds(self) -> list[dict]:
        self.prepare()
        self.trackers = make_trackers(self.cfg, self.layout, self.tracking_parent)
        ok = False
        try:
            records = self._rounds()
            ok = True
            return records
        finally:
            for tracker in self.trackers:
                tracker.close(ok)

    def _rounds(self) -> list[dict]:
        for r in range(self.cfg.loop.rounds):
            done = self._load_record(r)
            if done is not None and self._ended_early(done):
                self.log(
                    f"[round {r}] was the last round of the earlier run; loop.rounds is now "
                    f"{self.cfg.loop.rounds}, so it runs its teacher and acquisition"
                )
                done = None
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
            write_rounds_csv(self.records, self.layout.rounds_csv)
            for tracker in self.trackers:  # after rounds.csv: it is one of their artefacts
                tracker.round(self.records[-1])
            self._notify(self.records[-1], resumed=False)
            self.log(format_round_table(self.records))
        write_rounds_csv(self.records, self.layout.rounds_csv)
        self.log("\n" + format_class_table(self.records[-1], self.data.classes))
        self.log(f"\nDone in {time.perf_counter() - self.started:.0f}s. Results in {self.run_dir}/")
        return self.records
