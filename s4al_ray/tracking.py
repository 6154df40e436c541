"""Run tracking: the metrics of every epoch and round where ML teams watch them.

``tracking: [tensorboard]`` (the default) writes TensorBoard event files to the run directory's
``tensorboard/`` (`tensorboard --logdir <run>/tensorboard`): per round every scalar of the round
record under the record's own names (``val/miou``, ``pool/labeled_frac``, ``time/train_s``,
``val/iou/<class>``), step = round; per student epoch its report under ``epoch/`` (losses, lr,
loop seconds), step = the epoch counted over all rounds. A resumed run adds event files to the
same directory (TensorBoard shows them as one run) and never writes a finished round again.
Runs on S3 write locally and upload the event files after each round.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile

from s4al_ray import storage
from s4al_ray.layout import RunLayout


def scalars(record: dict) -> dict[str, float]:
    """A record's finite numbers (lists, dicts, missing IoUs left out)."""
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


class RunTensorBoard:
    """One run's TensorBoard events (see the module docstring)."""

    def __init__(self, layout: RunLayout, epochs_per_round: int) -> None:
        from tensorboardX import SummaryWriter

        self.target = layout.tensorboard_dir
        self.on_s3 = storage.is_s3(self.target)
        self.local = tempfile.mkdtemp(prefix="s4al-tb-") if self.on_s3 else self.target
        self.epochs = epochs_per_round
        self.writer = SummaryWriter(logdir=self.local, flush_secs=30)

    def epoch(self, r: int, report: dict) -> None:
        step = r * self.epochs + int(report.get("epoch", 0))
        for key, value in scalars(report).items():
            if key != "epoch":
                self.writer.add_scalar(f"epoch/{key.removeprefix('train/')}", value, step)

    def round(self, record: dict) -> None:
        r = int(record["round"])
        for key, value in scalars(record).items():
            if key != "round":
                self.writer.add_scalar(key, value, r)
        self.writer.flush()
        self._upload()

    def _upload(self) -> None:
        if not self.on_s3:
            return
        for name in os.listdir(self.local):
            with open(os.path.join(self.local, name), "rb") as handle:
                storage.write_bytes(storage.join(self.target, name), handle.read())

    def close(self) -> None:
        self.writer.close()
        self._upload()
        if self.on_s3:
            shutil.rmtree(self.local, ignore_errors=True)


def make_trackers(names: list[str], layout: RunLayout, epochs_per_round: int) -> list:
    return [RunTensorBoard(layout, epochs_per_round) for name in names if name == "tensorboard"]
