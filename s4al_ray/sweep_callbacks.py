"""The driver-side hooks a sweep hands Ray Tune: progress lines, TensorBoard files per round, and
trial directory names.

Tune pickles them into the experiment state and unpickles them on restore, so they are
module-level names with no state worth keeping (:mod:`s4al_ray.sweep` imports each under its
old name too, for sweeps started before they lived here).
"""

from __future__ import annotations

import re
from typing import Any, Callable

from ray import tune
from ray.tune.logger import TBXLoggerCallback

from s4al_ray.sweep_report import short_names
from s4al_ray.sweep_space import Sweep, plain_value
from s4al_ray.tracking import scalars

# A round record's scalars: the same rule for Tune's results as for a run's own trackers.
round_metrics = scalars


def trial_dirname(trial: Any) -> str:
    """``<trial id>_<key=value,...>``: the trial id first (reports find it there), then what
    TensorBoard's run list should show."""
    params = getattr(trial, "evaluated_params", None) or {}
    names = short_names(list(params))
    text = ",".join(f"{names[k]}={_short_value(v)}" for k, v in params.items())
    name = f"{trial.trial_id}_{text}" if text else trial.trial_id
    return re.sub(r"[^\w.=,+-]", "_", name)[:120]


def _short_value(value: Any) -> str:
    value = plain_value(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# The callbacks print rather than take a log function: what they hold must survive a pickle.


class RoundTensorBoard(TBXLoggerCallback):
    """Tune's TensorBoard logger with step = round and only the experiment's metrics.

    Subclassing keeps Tune from adding its own (step = training iteration, every internal key).
    Event files go to the trial's directory under the sweep; the hyperparameters (the searched
    config values) with the final target are written when the trial ends, as Tune does.
    """

    PREFIXES = ("val/", "pool/", "time/", "train/", "teacher/")
    SUMMARY = ("target", "auc", "val/miou", "pool/labeled_frac")

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if trial not in self._trial_writer:
            self.log_trial_start(trial)
        writer = self._trial_writer[trial]
        step = int(result.get("round", iteration))
        scalars = {
            k: v
            for k, v in round_metrics(result).items()
            if k.startswith(self.PREFIXES) or k in ("target", "auc")
        }
        for key, value in scalars.items():
            writer.add_scalar(key, value, global_step=step)
        writer.flush()
        self._trial_result[trial] = {k: scalars[k] for k in self.SUMMARY if k in scalars}


def _label(trial: Any) -> str:
    params = trial.evaluated_params or {}
    names = short_names(list(params))
    text = " ".join(f"{names[k]}={_short_value(v)}" for k, v in params.items())
    return f"{trial.trial_id}" + (f" ({text})" if text else "")


class SweepProgress(tune.Callback):
    """One line per trial start, round and end: what the researcher watches."""

    def __init__(self, metric: str, rounds: int) -> None:
        self.metric, self.rounds = metric, rounds

    def _rounds(self, trial: Any) -> int:
        return int(trial.config.get("loop.rounds", self.rounds))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"[sweep] {_label(trial)} started", flush=True)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        nan = float("nan")
        print(
            f"[sweep] {trial.trial_id} round {result.get('round')}/{self._rounds(trial) - 1}: "
            f"mIoU {100 * result.get('val/miou', nan):.1f}%, labeled "
            f"{100 * result.get('pool/labeled_frac', nan):.2f}%, "
            f"{self.metric} {result.get('target', nan):.4f}",
            flush=True,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = int((trial.last_result or {}).get("round", -1)) + 1
        what = "finished" if done >= self._rounds(trial) else f"stopped early after {done} round(s)"
        print(f"[sweep] {trial.trial_id} {what}", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"[sweep] {trial.trial_id} FAILED; details in {trial.path}/error.txt", flush=True)


def make_callbacks(sweep: Sweep, log: Callable[[str], None]) -> list:
    callbacks: list = [SweepProgress(sweep.cfg.metric, sweep.base.loop.rounds)]
    try:
        callbacks.append(RoundTensorBoard())
    except ImportError:
        log(
            "[sweep] tensorboardX is not installed: no TensorBoard files (pip install tensorboardX)"
        )
    return callbacks
