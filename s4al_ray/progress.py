"""Progress inside a stage, in the driver's terminal, with worker logs still off.

The work reports where it happens and the driver draws it: Ray Train's controller forwards every
epoch report (:class:`TrainProgress`, a ``ray.train.UserCallback``) and the teacher's
post-process tasks count the images of each block they finish, into a Ray queue
(``ray.util.queue.Queue``: an actor that takes no CPU). A driver thread drains it and draws a live
tqdm bar when stdout is a terminal, else plain lines (job logs, CI): one per epoch, and one every
``LINE_EVERY_S`` of a teacher pass.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable

import ray
from ray.train import UserCallback
from ray.util.queue import Queue
from tqdm import tqdm

from s4al_ray.report import fmt_duration

LINE_EVERY_S = 10.0  # a teacher pass's line interval when stdout is not a terminal


class TrainProgress(UserCallback):
    """Runs in Ray Train's controller: forwards rank 0's report of each epoch to the driver."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if metrics:
            report = {k: v for k, v in metrics[0].items() if k != "val/confusion"}
            self.queue.actor.put_nowait.remote(("train", report))  # never blocks training


def post_images(queue: Queue | None, count: int) -> None:
    """From a teacher task: ``count`` more pool images are done."""
    if queue is not None:
        queue.actor.put_nowait.remote(("teacher", count))


class StageProgress:
    """``with StageProgress(prefix, total, unit) as queue:`` runs a stage whose workers post to
    ``queue``; its progress is drawn until the block ends. ``total``: epochs (train) or images
    (teacher)."""

    def __init__(
        self,
        prefix: str,
        total: int,
        unit: str,
        log: Callable[[str], None] = print,
        live: bool | None = None,
        steps_per_epoch: int = 0,
        on_epoch: Callable[[dict], None] | None = None,
    ) -> None:
        self.prefix, self.total, self.unit, self.log = prefix, total, unit, log
        self.steps_per_epoch = steps_per_epoch
        self.live = sys.stdout.isatty() if live is None else live
        self.done = 0
        # (time, units done) at the first event: the rate is measured from there on, so neither
        # the stage's start-up (Ray Train's worker group, the pipeline) nor the epochs a resumed
        # round restored from its checkpoint count as work.
        self._first: tuple[float, int] | None = None
        self.on_epoch = on_epoch  # called with each epoch's report (the run's trackers)
        self._stop = threading.Event()
        self._bar = None

    def __enter__(self) -> Queue:
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.started = self._last_line = time.perf_counter()
        if self.live:
            self._bar = tqdm(total=self.total, unit=self.unit, desc=self.prefix, leave=False)
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()
        return self.queue

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._drain_once(block=False)  # what arrived after the last poll
        if self._bar is not None:
            self._bar.close()
        ray.kill(self.queue.actor)

    # -- drawing
    def _drain(self) -> None:
        while not self._stop.is_set():
            self._drain_once(block=True)

    def _drain_once(self, block: bool) -> None:
        try:
            events = self.queue.get_nowait_batch(self.queue.qsize())
            if not events and block:
                time.sleep(0.2)
                return
        except Exception:  # noqa: BLE001  (the queue actor gone at shutdown: nothing to draw)
            return
        for kind, payload in events:
            if kind == "train":
                self._epoch(payload)
            else:
                self._images(int(payload))

    def _eta(self, seconds_per_unit: float = 0.0) -> str:
        """Time left at the rate since the first event; before a second one, at
        ``seconds_per_unit`` (the epoch's own loop time) or the rate since the stage began."""
        now = time.perf_counter()
        if self._first is None:
            self._first = (now, self.done)
        t0, done0 = self._first
        if self.done > done0:
            per_unit = (now - t0) / (self.done - done0)
        elif seconds_per_unit:
            per_unit = seconds_per_unit
        else:
            per_unit = (now - self.started) / max(self.done, 1)
        return fmt_duration(per_unit * max(0, self.total - self.done))

    def _epoch(self, report: dict[str, Any]) -> None:
        if self.on_epoch is not None:
            self.on_epoch(report)
        self.done = int(report.get("epoch", self.done)) + 1
        losses = {
            k.removeprefix("train/loss_"): v
            for k, v in report.items()
            if k.startswith("train/loss_") and k != "train/loss_total"
        }
        parts = ", ".join(f"{k} {v:.3f}" for k, v in losses.items())
        seconds = report.get("train/seconds") or 0.0
        steps = self.steps_per_epoch
        rate = f"{steps / seconds:.1f} steps/s, " if seconds and steps else ""
        line = (
            f"epoch {self.done}/{self.total}: loss {report.get('train/loss_total', 0.0):.3f}"
            + (f" ({parts})" if parts else "")
            + f", {rate}lr {report.get('train/lr', 0.0):.2g}, ETA {self._eta(seconds)}"
        )
        self._draw(line, self.done, force_line=True, keep=True)

    def _images(self, count: int) -> None:
        self.done += count
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        line = (
            f"{self.done}/{self.total} {self.unit}, {self.done / elapsed:.1f} {self.unit}/s, "
            f"ETA {self._eta()}"
        )
        due = time.perf_counter() - self._last_line >= LINE_EVERY_S or self.done >= self.total
        self._draw(line, self.done, force_line=due)

    def _draw(self, line: str, position: int, force_line: bool, keep: bool = False) -> None:
        """A line (not a terminal: when due), or the live bar; ``keep``: an epoch's line is
        printed above the bar too, so the terminal keeps each epoch's losses."""
        if self._bar is not None:
            if keep:
                self._bar.clear()
                self.log(f"{self.prefix} {line}")
            self._bar.n = min(position, self.total)
            self._bar.set_postfix_str(line.split(": ", 1)[-1], refresh=True)
            return
        if force_line:
            self._last_line = time.perf_counter()
            self.log(f"{self.prefix} {line}")
