"""Inside a sweep trial: the Tune function that runs one whole experiment on some node and
reports one Tune result per round (each exactly once, also after a restore)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass

from ray import tune

from s4al_ray.config import ExperimentConfig, from_dict
from s4al_ray.sweep_callbacks import round_metrics
from s4al_ray.sweep_report import curve_auc, curve_points, target_value
from s4al_ray.sweep_space import absolute_paths, plain_value, with_values
from s4al_ray.tracking import TrackingParent

LEDGER_FILE = "reported.json"


@dataclass(frozen=True)
class TrialPlan:
    """What every trial needs from the driver (plain data, shipped once via the object store)."""

    sweep: str
    base_tree: dict
    trials_uri: str
    cwd: str
    metric: str
    budget: float
    cpus: int  # this trial's share of the cluster: sizes its teacher pool
    gpus: int
    # The sweep's parent run and group in the trackers (a default: plans pickled before it
    # existed restore without it).
    tracking_parent: TrackingParent | None = None

    def experiment_config(self, params: dict, trial_id: str) -> ExperimentConfig:
        values = {k: plain_value(v) for k, v in params.items()}
        tree = with_values(self.base_tree, values)
        tree["name"] = f"{self.sweep}-{trial_id}"
        tree["storage"] = self.trials_uri
        absolute_paths(tree, self.cwd)
        return from_dict(tree)


def _last_reported_round() -> int:

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return -1
    with checkpoint.as_directory() as directory:
        with open(os.path.join(directory, LEDGER_FILE)) as handle:
            return int(json.load(handle)["round"])


def _report(metrics: dict) -> None:
    """One Tune result per round, with a tiny checkpoint that records the round as reported."""

    with tempfile.TemporaryDirectory(prefix="s4al-tune-") as directory:
        with open(os.path.join(directory, LEDGER_FILE), "w") as handle:
            json.dump({"round": metrics["round"]}, handle)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def run_trial(config: dict, plan: TrialPlan) -> None:
    """The Tune trainable: one whole experiment, one ``tune.report`` per round."""
    from s4al_ray.experiment import Experiment
    from s4al_ray.runtime import ClusterResources

    trial_id = tune.get_context().get_trial_id()
    cfg = plan.experiment_config(config, trial_id)
    reported = _last_reported_round()
    records: list[dict] = []

    def on_record(record: dict, resumed: bool) -> None:
        records.append(record)
        if record["round"] <= reported:
            return  # Tune already has it (restored from the trial's checkpoint)
        points = curve_points(records)
        _report(
            {
                **round_metrics(record),
                "round": int(record["round"]),
                "target": target_value(plan.metric, points, plan.budget),
                "auc": curve_auc(points),
            }
        )

    def log(line: str) -> None:
        print(f"[{cfg.name}] {line}", flush=True)

    Experiment(
        cfg,
        ClusterResources(plan.cpus, plan.gpus),
        log=log,
        on_record=on_record,
        tracking_parent=plan.tracking_parent,
    ).run()
