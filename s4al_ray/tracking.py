"""Run tracking: the metrics of every epoch and round where ML teams watch them.

``tracking: [tensorboard]`` (the default) writes TensorBoard event files to the run directory's
``tensorboard/`` (`tensorboard --logdir <run>/tensorboard`): per round every scalar of the round
record under the record's own names (``val/miou``, ``pool/labeled_frac``, ``time/train_s``,
``val/iou/<class>``), step = round; per student epoch its report under ``epoch/`` (losses, lr,
loop seconds), step = the epoch counted over all rounds. A resumed run adds event files to the
same directory (TensorBoard shows them as one run) and never writes a finished round again.
Runs on S3 write locally and upload the event files after each round.

``mlflow`` logs one MLflow run per experiment run (MLflow experiment ``s4al-ray``, run name =
the experiment's name) through MLflow's own client: the resolved config as params once, the same
metrics and steps, and ``rounds.csv`` and the report page as artefacts after each round. The run's
id is kept in ``<run>/tracking.json``, so a resumed run continues the same MLflow run. The server
comes from ``tracking_uri`` (else ``MLFLOW_TRACKING_URI``, else MLflow's local default); its
credentials only from the environment, read by MLflow itself.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

from s4al_ray import storage
from s4al_ray.config import ExperimentConfig, flatten, to_dict
from s4al_ray.layout import RunLayout

MLFLOW_EXPERIMENT = "s4al-ray"


def scalars(record: dict) -> dict[str, int | float]:
    """A record's finite numbers (lists, dicts, missing IoUs left out)."""
    return {
        k: v
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def round_scalars(record: dict) -> tuple[int, dict[str, float]]:
    """(step, values) of a round record: its scalars under their own names, step = round."""
    values = {k: float(v) for k, v in scalars(record).items() if k != "round"}
    return int(record["round"]), values


def epoch_scalars(r: int, report: dict, epochs_per_round: int) -> tuple[int, dict[str, float]]:
    """(step, values) of round ``r``'s student epoch report: under ``epoch/`` (``train/``
    dropped), step = the epoch counted over all rounds."""
    step = r * epochs_per_round + int(report.get("epoch", 0))
    values = {
        f"epoch/{k.removeprefix('train/')}": float(v)
        for k, v in scalars(report).items()
        if k != "epoch"
    }
    return step, values


class RunTensorBoard:
    """One run's TensorBoard events (see the module docstring)."""

    def __init__(self, layout: RunLayout, epochs_per_round: int) -> None:
        from tensorboardX import SummaryWriter

        self.target = layout.tensorboard_dir
        self.on_s3 = storage.is_s3(self.target)
        self.local = tempfile.mkdtemp(prefix="s4al-tb-") if self.on_s3 else self.target
        self.epochs = epochs_per_round
        self.writer = SummaryWriter(logdir=self.local, flush_secs=30)

    def _add(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def epoch(self, r: int, report: dict) -> None:
        self._add(*epoch_scalars(r, report, self.epochs))

    def round(self, record: dict) -> None:
        self._add(*round_scalars(record))
        self.writer.flush()
        self._upload()

    def _upload(self) -> None:
        if not self.on_s3:
            return
        for name in os.listdir(self.local):
            with open(os.path.join(self.local, name), "rb") as handle:
                storage.write_bytes(storage.join(self.target, name), handle.read())

    def close(self, ok: bool = True) -> None:
        self.writer.close()
        self._upload()
        if self.on_s3:
            shutil.rmtree(self.local, ignore_errors=True)


class RunMLflow:
    """One experiment run as one MLflow run (see the module docstring)."""

    ARTEFACTS = ("rounds.csv", "report/report.html")

    def __init__(self, layout: RunLayout, cfg: ExperimentConfig) -> None:
        from mlflow import MlflowClient

        self.layout, self.epochs = layout, cfg.train.epochs
        self.client = MlflowClient(tracking_uri=cfg.tracking_uri or None)
        self.run_id = self._resumed_run_id()
        if self.run_id is None:
            experiment = self.client.get_experiment_by_name(MLFLOW_EXPERIMENT)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment(MLFLOW_EXPERIMENT)
            )
            run = self.client.create_run(experiment_id, run_name=cfg.name)
            self.run_id = run.info.run_id
            storage.write_text(layout.tracking, json.dumps({"mlflow_run_id": self.run_id}))
            self._log_params(cfg)
        else:
            self.client.update_run(self.run_id, status="RUNNING")

    def _resumed_run_id(self) -> str | None:
        if not storage.exists(self.layout.tracking):
            return None
        return json.loads(storage.read_text(self.layout.tracking)).get("mlflow_run_id")

    def _log_params(self, cfg: ExperimentConfig) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(to_dict(cfg)).items())]
        for start in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def _log(self, step: int, values: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def epoch(self, r: int, report: dict) -> None:
        self._log(*epoch_scalars(r, report, self.epochs))

    def round(self, record: dict) -> None:
        self._log(*round_scalars(record))
        with tempfile.TemporaryDirectory(prefix="s4al-mlflow-") as staging:
            for name in self.ARTEFACTS:
                uri = self.layout.path(*name.split("/"))
                if not storage.exists(uri):
                    continue
                local = os.path.join(staging, os.path.basename(name))
                with open(local, "wb") as handle:
                    handle.write(storage.read_bytes(uri))
                self.client.log_artifact(self.run_id, local, os.path.dirname(name) or None)

    def close(self, ok: bool = True) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def check_trackers(cfg: ExperimentConfig) -> None:
    """Before any work: every tracker's library is installed."""
    import importlib.util

    from s4al_ray.config import ConfigError

    needs = {"tensorboard": ("tensorboardX", "tensorboardX"), "mlflow": ("mlflow", "mlflow")}
    for name in cfg.tracking:
        module, package = needs[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"tracking: {name} needs the {package} package: pip install {package} "
                f"(or drop it: tracking=[{', '.join(t for t in cfg.tracking if t != name)}])"
            )


def make_trackers(cfg: ExperimentConfig, layout: RunLayout) -> list:
    """The trackers ``cfg.tracking`` names, in its order."""
    trackers: list = []
    for name in cfg.tracking:
        if name == "tensorboard":
            trackers.append(RunTensorBoard(layout, cfg.train.epochs))
        elif name == "mlflow":
            trackers.append(RunMLflow(layout, cfg))
    return trackers
