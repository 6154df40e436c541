"""Run tracking: the metrics of every epoch and round where ML teams watch them.

``tracking: [tensorboard]`` (the default) writes TensorBoard event files to the run directory's
``tensorboard/`` (`tensorboard --logdir <run>/tensorboard`): per round every scalar of the round
record under the record's own names (``val/miou``, ``pool/labeled_frac``, ``time/train_s``,
``val/iou/<class>``), step = round; per student epoch its report under ``epoch/`` (losses, lr,
loop seconds), step = the epoch counted over all rounds. A resumed run adds event files to the
same directory (TensorBoard shows them as one run) and never writes a finished round again.
Runs on S3 write locally and upload the event files after each round.

``mlflow`` logs one MLflow run per experiment run (MLflow experiment ``tracking_project``, run
name = the experiment's name) through MLflow's own client: the resolved config as params once,
the same metrics and steps, and ``rounds.csv`` and the report page as artefacts after each round.
The server comes from ``tracking_uri`` (else ``MLFLOW_TRACKING_URI``, else MLflow's local
default); its credentials only from the environment, read by MLflow itself.

``wandb`` logs one W&B run per experiment run (project ``tracking_project``) with the same
config, names and artefacts: rounds on the ``round`` axis, epochs on ``epoch/step``. It runs
online when a key is present (``WANDB_API_KEY``, or ``wandb login``'s netrc entry), else offline
into ``<run>/wandb/`` (upload later: ``wandb sync <run>/wandb/offline-run-*``); ``WANDB_MODE``
overrides. Credentials are read by W&B itself, never by this project.

Each keeps its run's id in ``<run>/tracking.json``, so a resumed run continues the same tracked
run. In a sweep every trial's MLflow run is a child of one parent run for the sweep
(``SweepTracking``), and its W&B run is in a group named after the sweep.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

from s4al_ray import storage
from s4al_ray.config import ExperimentConfig, flatten, to_dict
from s4al_ray.layout import RunLayout

# A run's files every tracker keeps as artefacts, refreshed after each round.
ARTEFACTS = ("rounds.csv", "report/report.html")


@dataclass(frozen=True)
class TrackingParent:
    """What ties a sweep's trials together in the trackers."""

    mlflow_run_id: str | None = None  # the sweep's MLflow run: each trial's run is its child
    group: str = ""  # the W&B group: the sweep's name


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


def tracked_ids(uri: str) -> dict:
    """The tracked runs' ids a run (or sweep) directory keeps in ``tracking.json``."""
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else {}


def keep_tracked_id(uri: str, key: str, value: str) -> None:
    storage.write_text(uri, json.dumps({**tracked_ids(uri), key: value}))


def params_of(cfg: ExperimentConfig) -> dict[str, str]:
    """The resolved config, flattened (``train.epochs``): every tracker's params."""
    return {k: str(v) for k, v in sorted(flatten(to_dict(cfg)).items())}


def local_file(uri: str, staging: str, name: str) -> str:
    """A local path of ``uri`` for a tracker's client (they upload local files): ``uri`` itself
    when it is local, else a copy at ``staging``/``name``."""
    if not storage.is_s3(uri):
        return uri
    local = os.path.join(staging, name)
    os.makedirs(os.path.dirname(local), exist_ok=True)
    with open(local, "wb") as handle:
        handle.write(storage.read_bytes(uri))
    return local


def local_artefacts(layout: RunLayout, staging: str) -> list[tuple[str, str]]:
    """(local file, name) of each of ``ARTEFACTS`` the run has (``local_file``)."""
    uris = [(layout.path(*name.split("/")), name) for name in ARTEFACTS]
    return [(local_file(uri, staging, name), name) for uri, name in uris if storage.exists(uri)]


class RunMLflow:
    """One experiment run as one MLflow run (see the module docstring)."""

    def __init__(
        self, layout: RunLayout, cfg: ExperimentConfig, parent: TrackingParent | None = None
    ) -> None:
        self.layout, self.epochs = layout, cfg.train.epochs
        self.client = mlflow_client(cfg)
        tags = {}
        if parent is not None and parent.mlflow_run_id:
            tags["mlflow.parentRunId"] = parent.mlflow_run_id  # MLflow's nested runs
        self.run_id = open_mlflow_run(
            self.client, layout.tracking, cfg.tracking_project, cfg.name, tags, params_of(cfg)
        )

    def epoch(self, r: int, report: dict) -> None:
        log_mlflow_metrics(self.client, self.run_id, *epoch_scalars(r, report, self.epochs))

    def round(self, record: dict) -> None:
        log_mlflow_metrics(self.client, self.run_id, *round_scalars(record))
        with tempfile.TemporaryDirectory(prefix="s4al-mlflow-") as staging:
            for local, name in local_artefacts(self.layout, staging):
                self.client.log_artifact(self.run_id, local, os.path.dirname(name) or None)

    def close(self, ok: bool = True) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def mlflow_client(cfg: ExperimentConfig):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=cfg.tracking_uri or None)


def mlflow_experiment(client, name: str) -> str:
    """The id of MLflow experiment ``name``, created on first use."""
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(name)


def open_mlflow_run(
    client, ids_uri: str, project: str, name: str, tags: dict, params: dict[str, str]
) -> str:
    """The id of the MLflow run kept in ``ids_uri`` (``tracking.json``), set running again; or
    of a new run in experiment ``project`` with these tags and params, kept there."""
    run_id = tracked_ids(ids_uri).get("mlflow_run_id")
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(mlflow_experiment(client, project), run_name=name, tags=tags)
    keep_tracked_id(ids_uri, "mlflow_run_id", run.info.run_id)
    log_mlflow_params(client, run.info.run_id, params)
    return run.info.run_id


def log_mlflow_metrics(client, run_id: str, step: int, values: dict[str, float]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, step) for k, v in values.items()]
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def log_mlflow_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    batch = [Param(k, v[:6000]) for k, v in params.items()]
    for start in range(0, len(batch), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=batch[start : start + 100])


def wandb_mode() -> str:
    """``WANDB_MODE`` when set; online when a key is present (``WANDB_API_KEY``, or the netrc
    entry ``wandb login`` writes for ``WANDB_BASE_URL``'s host, in ``NETRC`` or ~/.netrc);
    else offline. Only whether a key exists is looked at, never its value."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        entries = netrc.netrc(os.environ.get("NETRC") or None)  # NETRC: as W&B reads it
        return "online" if entries.authenticators(host or "") else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


class RunWandb:
    """One experiment run as one W&B run (see the module docstring)."""

    def __init__(
        self, layout: RunLayout, cfg: ExperimentConfig, parent: TrackingParent | None = None
    ) -> None:
        import wandb

        self.layout, self.epochs, self.endpoint = layout, cfg.train.epochs, cfg.s3_endpoint
        self.target = layout.wandb_dir
        self.on_s3 = storage.is_s3(layout.run_dir)
        # W&B writes <dir>/wandb/: on S3 into a local folder, copied up after each round.
        self.local = tempfile.mkdtemp(prefix="s4al-wandb-") if self.on_s3 else layout.run_dir
        run_id = tracked_ids(layout.tracking).get("wandb_run_id") or uuid.uuid4().hex[:12]
        self.run = wandb.init(
            project=cfg.tracking_project,
            name=cfg.name,
            id=run_id,
            resume="allow",  # a resumed experiment continues its run
            group=(parent.group or None) if parent is not None else None,
            dir=self.local,
            mode=wandb_mode(),
            config=params_of(cfg),
            # Quiet (the driver's terminal shows the run's progress), and stdout left alone.
            # The run file is flushed every second, not every 15 s: a driver killed (a lost
            # machine) would otherwise lose a finished round's record, which the resumed run
            # does not log again (measured: nothing on disk 10 s after a log at the default).
            settings=wandb.Settings(
                silent=True,
                console="off",
                x_disable_stats=True,
                x_transaction_log_flush_interval=1.0,
            ),
            reinit="create_new",  # a process may hold another run (sweep trials, tests)
        )
        keep_tracked_id(layout.tracking, "wandb_run_id", run_id)
        self.run.define_metric("round")
        self.run.define_metric("epoch/step")
        self.run.define_metric("epoch/*", step_metric="epoch/step")
        self.defined: set[str] = set()

    def epoch(self, r: int, report: dict) -> None:
        step, values = epoch_scalars(r, report, self.epochs)
        self.run.log({"epoch/step": step, **values})

    def round(self, record: dict) -> None:
        import wandb

        step, values = round_scalars(record)
        for key in sorted(values.keys() - self.defined):
            self.run.define_metric(key, step_metric="round")
            self.defined.add(key)
        self.run.log({"round": step, **values})
        # One artefact version per round; W&B copies the files into its own staging at once.
        artefact = wandb.Artifact(f"{self.run.name}-report", type="report")
        with tempfile.TemporaryDirectory(prefix="s4al-wandb-") as staging:
            for local, name in local_artefacts(self.layout, staging):
                artefact.add_file(local, name=name)
            self.run.log_artifact(artefact, aliases=[f"round-{step}"])
        self._upload()

    def _upload(self) -> None:
        if self.on_s3:
            from s4al_ray.transfer import sync

            sync(os.path.join(self.local, "wandb"), self.target, self.endpoint, log=lambda _: None)

    def close(self, ok: bool = True) -> None:
        self.run.finish(exit_code=0 if ok else 1)
        self._upload()
        if self.on_s3:
            shutil.rmtree(self.local, ignore_errors=True)


class SweepTracking:
    """A sweep's own tracked run: with ``mlflow``, the parent MLflow run of its trials' runs
    (params: the sweep's settings and search space; at the end its best target and the report
    files); with ``wandb``, the group its trials' runs share. Its id is kept in the sweep
    directory's ``tracking.json``, so a resumed sweep keeps its parent."""

    def __init__(
        self, base: ExperimentConfig, name: str, sweep_uri: str, params: dict[str, str]
    ) -> None:
        self.client, run_id = None, None
        if "mlflow" in base.tracking:
            self.client = mlflow_client(base)
            ids_uri = storage.join(sweep_uri, "tracking.json")
            tags = {"s4al.sweep": name}
            run_id = open_mlflow_run(
                self.client, ids_uri, base.tracking_project, name, tags, params
            )
        self.parent = TrackingParent(run_id, name)

    def close(self, best: dict[str, float], files: list[str], ok: bool = True) -> None:
        """The sweep's best values (``best/target``, ...) and report files, then its status."""
        if self.client is None:
            return
        run_id = self.parent.mlflow_run_id
        finite = {k: v for k, v in best.items() if math.isfinite(v)}
        log_mlflow_metrics(self.client, run_id, 0, finite)
        with tempfile.TemporaryDirectory(prefix="s4al-mlflow-") as staging:
            for uri in filter(storage.exists, files):
                name = uri.rsplit("/", 1)[-1]
                self.client.log_artifact(run_id, local_file(uri, staging, name))
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")


def check_trackers(cfg: ExperimentConfig) -> None:
    """Before any work: every tracker's library is installed."""
    import importlib.util

    from s4al_ray.config import ConfigError

    for name in cfg.tracking:
        package = "tensorboardX" if name == "tensorboard" else name
        if importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"tracking: {name} needs the {package} package: pip install {package} "
                f"(or drop it: tracking=[{', '.join(t for t in cfg.tracking if t != name)}])"
            )


def make_trackers(
    cfg: ExperimentConfig, layout: RunLayout, parent: TrackingParent | None = None
) -> list:
    """The trackers ``cfg.tracking`` names, in its order (``parent``: a sweep trial's)."""
    trackers: list = []
    for name in cfg.tracking:
        if name == "tensorboard":
            trackers.append(RunTensorBoard(layout, cfg.train.epochs))
        elif name == "mlflow":
            trackers.append(RunMLflow(layout, cfg, parent))
        elif name == "wandb":
            trackers.append(RunWandb(layout, cfg, parent))
    return trackers
