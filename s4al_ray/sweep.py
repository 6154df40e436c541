"""Ray Tune sweeps: many experiments (whole round loops) over a search space of config keys.

A sweep file names a base experiment config, dotted overrides, a search space and a target::

    base: smoke.yaml                      # relative to this file, else to the working directory
    overrides: {data.root: data_cache/synthetic_smoke}
    search_space:
      acquisition.round_budget: {grid: [0.03, 0.05]}
      train.reco_weight: {choice: [0.0, 0.1]}
    num_samples: 1
    metric: auc                           # final_miou | auc | miou_at_budget (with budget: 0.12)

Each Tune trial is a plain function that runs :class:`Experiment` (Ray Train student, Ray Data
teacher, its own pool actor) and reports one Tune result per round. Everything is validated, and
every grid combination built into a full experiment config, before Ray starts.

Resume: a trial's experiment is named ``<sweep>-<trial id>`` under ``<sweep dir>/trials``; Tune
keeps trial ids on restore, so a restored trial finds its own run directory and the round loop
skips finished rounds. A one-file Tune checkpoint per report records the last round reported, so
a resumed trial reports each round exactly once (and Tune restores its result log from it).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import itertools
import json
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import yaml
from ray import tune
from ray.tune.logger import TBXLoggerCallback

from s4al_ray import storage
from s4al_ray.config import (ConfigError, ExperimentConfig, _build, _set_dotted, _spec,
                             from_dict, parse_override, read_yaml, to_dict)
from s4al_ray.sweep_report import (METRICS, TrialRow, curve_auc, curve_points, format_report,
                                   plot_curves, score_rows, short_names, target_value,
                                   write_report_csv)

SPEC_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
TRIAL_RESOURCE = "s4al_trial"
# Fallback trial reservation when the cluster has no TRIAL_RESOURCE: a trial's own process is a
# light driver, and a CPU reservation would starve its trainer on small machines.
FALLBACK_TRIAL_MEMORY = 256 * 1024 * 1024
MAX_CHECKED_COMBOS = 4096
LEDGER_FILE = "reported.json"
SWEEP_FILE = "sweep.yaml"
# Keys of the saved sweep spec that may change between a sweep and its resumption: where the
# base file lives, concurrency, and what each trial overrides anyway (its name); experiment keys
# an experiment may resume with (s4al_ray.experiment.RESUMABLE_KEYS) are accepted too.
RESUMABLE_SWEEP_KEYS = ("max_concurrent_trials", "base", "base_config.name")


@dataclass
class SweepConfig:
    name: str = _spec("sweep", doc="sweep name; results in <storage>/<name>")
    base: str = _spec("", doc="experiment config the trials start from")
    overrides: dict = _spec({}, doc="dotted experiment keys -> values applied to the base")
    search_space: dict = _spec({}, doc="dotted experiment key -> {grid|choice|uniform|"
                                       "loguniform|randint: ...}")
    num_samples: int = _spec(1, lo=1, doc="samples of the space (each covers the whole grid)")
    metric: str = _spec("final_miou", choices=METRICS)
    budget: float = _spec(0.1, lo=0.0, hi=1.0, doc="labeled fraction for miou_at_budget")
    scheduler: str = _spec("none", choices=("none", "asha"))
    grace_period: int = _spec(1, lo=1, doc="ASHA: rounds before a trial may be stopped")
    reduction_factor: int = _spec(2, lo=2, doc="ASHA: keep 1/reduction_factor per rung")
    storage: str = _spec("", doc="local dir or s3:// URI; empty = the base config's storage")
    max_concurrent_trials: int = _spec(0, lo=0, doc="0 = as many as the cluster's CPUs/GPUs fit")
    seed: int = _spec(0, doc="seed of the random search")


# ---------------------------------------------------------------------------------------------
# The search space


@dataclass(frozen=True)
class Spec:
    key: str
    kind: str
    values: tuple

    @classmethod
    def parse(cls, key: str, raw: Any) -> "Spec":
        where = f"search_space.{key}"
        usage = "expected one of {grid: [..]}, {choice: [..]}, {uniform: [lo, hi]}, " \
                "{loguniform: [lo, hi]}, {randint: [lo, hi]}"
        if not isinstance(raw, dict) or len(raw) != 1:
            raise ConfigError(f"{where}: {usage}, got {raw!r} (constants go under overrides:)")
        (kind, values), = raw.items()
        if kind not in SPEC_KINDS:
            close = difflib.get_close_matches(str(kind), SPEC_KINDS, n=1, cutoff=0.4)
            hint = f"; did you mean '{close[0]}'?" if close else f"; {usage}"
            raise ConfigError(f"{where}: unknown search kind '{kind}'{hint}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: {kind} needs a non-empty list, got {values!r}")
        if kind in ("uniform", "loguniform", "randint"):
            _check_bounds(where, kind, values)
        return cls(key, kind, tuple(values))

    def candidates(self) -> list:
        """Values validation tries: every listed value, or both bounds of a range."""
        if self.kind in ("uniform", "loguniform"):
            return [float(v) for v in self.values]  # a float key sampled by Tune gets floats
        return list(self.values)

    @property
    def grid_size(self) -> int:
        return len(self.values) if self.kind == "grid" else 1

    def domain(self) -> Any:
        lo, hi = self.values[0], self.values[-1]
        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "uniform":
            return tune.uniform(lo, hi)
        if self.kind == "loguniform":
            return tune.loguniform(lo, hi)
        return tune.randint(lo, hi + 1)  # our bounds are inclusive; Tune's upper is not

    def describe(self) -> str:
        return f"{self.key} {self.kind} {list(self.values)}"


def _check_bounds(where: str, kind: str, values: list) -> None:
    numbers = len(values) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                       for v in values)
    if not numbers:
        raise ConfigError(f"{where}: {kind} needs [lo, hi], got {values!r}")
    lo, hi = values
    if kind == "randint" and not all(isinstance(v, int) for v in values):
        raise ConfigError(f"{where}: randint bounds must be integers, got {values!r}")
    if (hi < lo) if kind == "randint" else (hi <= lo):
        raise ConfigError(f"{where}: {kind} needs lo < hi, got {values!r}")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}: loguniform needs lo > 0, got {values!r}")


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> dotted keys, so YAML may use either ``a.b: v`` or ``a: {b: v}``."""
    out: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, key + "."))
        else:
            out[key] = value
    return out


def _flatten_space(tree: dict, leaves: set[str], prefix: str = "") -> dict[str, Any]:
    """Search space as dotted key -> spec. Nested mappings are followed until a config key is
    reached, so ``train: {lr: {grid: ..}}`` equals ``train.lr: {grid: ..}`` and a typo in a spec
    kind (``train.lr: {grd: ..}``) is reported as such, not as an unknown key."""
    out: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        nested = isinstance(value, dict) and value and not set(value) & set(SPEC_KINDS)
        if key in leaves or not nested:
            out[key] = value
        else:
            out.update(_flatten_space(value, leaves, key + "."))
    return out


def _config_keys() -> tuple[list[str], set[str]]:
    """All dotted leaf keys of an experiment config, and the section names."""
    leaves = list(_flatten(to_dict(ExperimentConfig())))
    sections = {k.rsplit(".", i)[0] for k in leaves for i in range(1, k.count(".") + 1)}
    return leaves, sections


def _check_key(key: str) -> None:
    leaves, sections = _config_keys()
    if key in ("name", "storage"):
        raise ConfigError(f"search_space.{key}: set by the sweep for each trial; not searchable")
    if key in leaves:
        return
    if key in sections:
        raise ConfigError(f"search_space: '{key}' is a config section; search a key inside it")
    close = difflib.get_close_matches(key, leaves, n=1, cutoff=0.6)
    if not close:  # a typo in the section name: match on the last segment
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in leaves if k.endswith("." + leaf) or k == leaf][:1]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"search_space: unknown config key '{key}'{hint}")


# ---------------------------------------------------------------------------------------------
# Loading and validating a sweep


@dataclass
class Sweep:
    cfg: SweepConfig
    path: str
    base_path: str
    base: ExperimentConfig          # base + overrides, validated
    space: dict[str, Spec]
    cwd: str = field(default_factory=os.getcwd)
    need_cpus: int = 1              # the most CPUs any trial's trainer/teacher needs at once
    need_gpus: int = 0

    @property
    def uri(self) -> str:
        return storage.join(storage.absolute(self.cfg.storage), self.cfg.name)

    @property
    def trials_uri(self) -> str:
        return storage.join(self.uri, "trials")

    @property
    def num_trials(self) -> int:
        return math.prod(s.grid_size for s in self.space.values()) * self.cfg.num_samples

    @property
    def max_rounds(self) -> int:
        spec = self.space.get("loop.rounds")
        return max(spec.candidates()) if spec else self.base.loop.rounds


def _resolve_base(base: str, sweep_path: str) -> str:
    if not base:
        raise ConfigError(f"{sweep_path}: 'base:' (the experiment config to start from) is missing")
    if storage.is_s3(base) or os.path.isabs(base):
        return base
    beside = os.path.join(os.path.dirname(os.path.abspath(sweep_path)), base)
    return beside if os.path.exists(beside) else os.path.abspath(base)


def load_sweep(path: str, overrides: Sequence[str] = ()) -> Sweep:
    """Read and validate a sweep file (plus ``key=value`` overrides of it). Raises ConfigError."""
    tree = read_yaml(path)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    try:
        cfg = _build(SweepConfig, tree)
    except ConfigError as err:
        raise ConfigError(f"{err} (in {path})") from None
    if not cfg.name or "/" in cfg.name or cfg.name.startswith("."):
        raise ConfigError(f"name: {cfg.name!r} must be a plain directory name (in {path})")
    base_path = _resolve_base(cfg.base, path)
    base_tree = read_yaml(base_path)
    for key, value in _flatten(cfg.overrides).items():
        _set_dotted(base_tree, key, value)
    try:
        base = from_dict(base_tree)
    except ConfigError as err:
        raise ConfigError(f"{err} (base {base_path} with the sweep's overrides)") from None
    cfg.storage = cfg.storage or base.storage
    try:
        sweep = Sweep(cfg, path, base_path, base, _parse_space(cfg.search_space))
        _validate_space(sweep)
        _validate_scheduler(sweep)
    except ConfigError as err:
        raise ConfigError(f"{err} (in {path})") from None
    return sweep


def _parse_space(tree: dict) -> dict[str, Spec]:
    flat = _flatten_space(tree, set(_config_keys()[0]))
    for key in flat:  # keys first: a typo is named before any value is looked at
        _check_key(key)
    return {key: Spec.parse(key, raw) for key, raw in flat.items()}


def _validate_scheduler(sweep: Sweep) -> None:
    cfg = sweep.cfg
    if cfg.scheduler == "asha" and cfg.grace_period >= sweep.max_rounds:
        raise ConfigError(f"grace_period ({cfg.grace_period}) must be below loop.rounds "
                          f"({sweep.max_rounds}), or ASHA can never stop a trial")


def _validate_space(sweep: Sweep) -> None:
    """Every key a config key, every value valid for it, every combination a valid config."""
    base_tree = to_dict(sweep.base)
    representative = {k: s.candidates()[0] for k, s in sweep.space.items()}
    for key, spec in sweep.space.items():
        for value in spec.candidates():
            try:
                _build(ExperimentConfig, _with_values(base_tree, {**representative, key: value}))
            except ConfigError as err:
                hint = " (use randint for an integer key)" if spec.kind in (
                    "uniform", "loguniform") and "expected int" in str(err) else ""
                raise ConfigError(f"search_space.{key} = {value!r}: {err}{hint}") from None
    needs = [_needs(_combination_config(base_tree, combo, sweep.cfg.name))
             for combo in _combinations(sweep.space)]
    sweep.need_cpus = max(n[0] for n in needs)
    sweep.need_gpus = max(n[1] for n in needs)


def _combinations(space: dict[str, Spec]) -> list[dict[str, Any]]:
    """All corners of the space (every grid/choice value, both range bounds), or, for a huge
    space, each key's values on their own."""
    keys = list(space)
    lists = [space[k].candidates() for k in keys]
    if math.prod(len(v) for v in lists) <= MAX_CHECKED_COMBOS:
        return [dict(zip(keys, combo)) for combo in itertools.product(*lists)]
    first = {k: v[0] for k, v in zip(keys, lists)}
    return [{**first, k: v} for k, values in zip(keys, lists) for v in values]


def _combination_config(base_tree: dict, combo: dict, name: str) -> ExperimentConfig:
    try:
        return from_dict(_with_values(base_tree, {**combo, "name": f"{name}-check"}))
    except ConfigError as err:
        values = ", ".join(f"{k}={v!r}" for k, v in combo.items())
        raise ConfigError(f"search_space: the combination {values} is not a valid "
                          f"experiment: {err}") from None


def _with_values(tree: dict, values: dict[str, Any]) -> dict:
    out = copy.deepcopy(tree)
    for key, value in values.items():
        _set_dotted(out, key, value)
    return out


def _needs(cfg: ExperimentConfig) -> tuple[int, int]:
    """(CPUs, GPUs) a trial needs at once: its trainer, or its smallest teacher pool."""
    train = cfg.train
    train_cpus = max(train.num_workers, 1) * train.cpus_per_worker
    cpus = max(train_cpus, cfg.teacher.cpus_per_actor * max(cfg.teacher.num_actors, 1))
    return cpus, (max(train.num_workers, 1) if train.use_gpu else 0)


# ---------------------------------------------------------------------------------------------
# Inside a trial (a Tune function on some node)


def _plain(value: Any) -> Any:
    """Tune samples numpy scalars; the config wants Python ones."""
    return value.item() if hasattr(value, "item") else value


def _absolute_paths(tree: dict, cwd: str) -> None:
    """Trials run in Tune's trial directory: make relative local paths the driver's."""
    data = tree.setdefault("data", {})
    for key in ("root", "cache_dir"):
        value = data.get(key)
        if value and not storage.is_s3(value) and not os.path.isabs(value):
            data[key] = os.path.join(cwd, value)
    pretrained = tree.get("model", {}).get("pretrained", "none")
    if pretrained not in ("none", "imagenet") and not storage.is_s3(pretrained) \
            and not os.path.isabs(pretrained):
        tree["model"]["pretrained"] = os.path.join(cwd, pretrained)


@dataclass(frozen=True)
class TrialPlan:
    """What every trial needs from the driver (plain data, shipped once via the object store)."""
    sweep: str
    base_tree: dict
    trials_uri: str
    cwd: str
    metric: str
    budget: float
    cpus: int   # this trial's share of the cluster: sizes its teacher pool
    gpus: int

    def experiment_config(self, params: dict, trial_id: str) -> ExperimentConfig:
        values = {k: _plain(v) for k, v in params.items()}
        tree = _with_values(self.base_tree, values)
        tree["name"] = f"{self.sweep}-{trial_id}"
        tree["storage"] = self.trials_uri
        _absolute_paths(tree, self.cwd)
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


def round_metrics(record: dict) -> dict[str, float]:
    """A round record's scalars (lists such as thresholds and missing IoUs left out)."""
    return {k: v for k, v in record.items() if isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


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
        _report({**round_metrics(record), "round": int(record["round"]),
                 "target": target_value(plan.metric, points, plan.budget),
                 "auc": curve_auc(points)})

    def log(line: str) -> None:
        print(f"[{cfg.name}] {line}", flush=True)

    Experiment(cfg, ClusterResources(plan.cpus, plan.gpus), log=log, on_record=on_record).run()


def trial_dirname(trial: Any) -> str:
    """``<trial id>_<key=value,...>``: the trial id first (reports find it there), then what
    TensorBoard's run list should show."""
    params = getattr(trial, "evaluated_params", None) or {}
    names = short_names(list(params))
    text = ",".join(f"{names[k]}={_short_value(v)}" for k, v in params.items())
    name = f"{trial.trial_id}_{text}" if text else trial.trial_id
    return re.sub(r"[^\w.=,+-]", "_", name)[:120]


def _short_value(value: Any) -> str:
    value = _plain(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _trial_id_from_path(path: str) -> str:
    match = re.match(r"[0-9a-f]+_\d{5}", os.path.basename(path.rstrip("/")))
    return match.group(0) if match else os.path.basename(path.rstrip("/"))


# ---------------------------------------------------------------------------------------------
# Driver-side Tune callbacks


# They are pickled into the Tune experiment and come back from it on restore, so they are
# module-level classes with no state worth keeping, and print rather than take a log function.


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
        scalars = {k: v for k, v in round_metrics(result).items()
                   if k.startswith(self.PREFIXES) or k in ("target", "auc")}
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

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        nan = float("nan")
        print(f"[sweep] {trial.trial_id} round {result.get('round')}/{self._rounds(trial) - 1}: "
              f"mIoU {100 * result.get('val/miou', nan):.1f}%, labeled "
              f"{100 * result.get('pool/labeled_frac', nan):.2f}%, "
              f"{self.metric} {result.get('target', nan):.4f}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = int((trial.last_result or {}).get("round", -1)) + 1
        what = ("finished" if done >= self._rounds(trial)
                else f"stopped early after {done} round(s)")
        print(f"[sweep] {trial.trial_id} {what}", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"[sweep] {trial.trial_id} FAILED; details in {trial.path}/error.txt", flush=True)


def _make_callbacks(sweep: Sweep, log: Callable[[str], None]) -> list:
    callbacks: list = [SweepProgress(sweep.cfg.metric, sweep.base.loop.rounds)]
    try:
        callbacks.append(RoundTensorBoard())
    except ImportError:
        log("[sweep] tensorboardX is not installed: no TensorBoard files (pip install tensorboardX)")
    return callbacks


# ---------------------------------------------------------------------------------------------
# Running a sweep (driver)


@dataclass
class SweepOutcome:
    uri: str
    rows: list[TrialRow]
    report_csv: str
    curves_png: str
    results: Any = None   # Tune's ResultGrid


def _trial_resources(log: Callable[[str], None]) -> dict:
    """A trial's own reservation. Not a CPU: its trainer and teacher reserve theirs, and on a
    small machine a CPU held by every trial driver would leave the trainers none."""
    import ray

    if ray.cluster_resources().get(TRIAL_RESOURCE, 0) >= 1:
        return {"CPU": 0, TRIAL_RESOURCE: 1}
    log(f"[sweep] the cluster has no '{TRIAL_RESOURCE}' resource; each trial reserves "
        f"{FALLBACK_TRIAL_MEMORY >> 20} MiB of memory instead (start nodes with "
        f"--resources='{{\"{TRIAL_RESOURCE}\": N}}' to cap trials per node)")
    return {"CPU": 0, "memory": FALLBACK_TRIAL_MEMORY}


def _concurrency(sweep: Sweep, cpus: int, gpus: int, log: Callable[[str], None]) -> int:
    fits = cpus // sweep.need_cpus
    if sweep.need_gpus:
        fits = min(fits, gpus // sweep.need_gpus)
    fits = max(fits, 1)
    wanted = sweep.cfg.max_concurrent_trials
    if wanted and wanted > fits:
        log(f"[sweep] max_concurrent_trials={wanted} but the cluster fits {fits} trial(s) "
            f"({sweep.need_cpus} CPU each): the extra trials' trainers will wait for resources")
    return wanted or fits


def _param_space(sweep: Sweep) -> dict:
    return {key: spec.domain() for key, spec in sweep.space.items()}


def _saved_spec(sweep: Sweep) -> dict:
    spec = to_dict(sweep.cfg)
    spec["search_space"] = {k: {s.kind: list(s.values)} for k, s in sweep.space.items()}
    spec["overrides"] = _flatten(sweep.cfg.overrides)
    spec["base_config"] = to_dict(sweep.base)
    return spec


def _resumable(key: str) -> bool:
    from s4al_ray.experiment import RESUMABLE_KEYS

    return key in RESUMABLE_SWEEP_KEYS or key.startswith(
        tuple(f"base_config.{k}" for k in RESUMABLE_KEYS))


def _check_sweep_dir(sweep: Sweep) -> None:
    """Refuse to resume a sweep directory that holds a different sweep; else record this one."""
    uri = storage.join(sweep.uri, SWEEP_FILE)
    now = _saved_spec(sweep)
    if storage.exists(uri):
        saved = yaml.safe_load(storage.read_text(uri)) or {}
        flat_saved, flat_now = _flatten(saved), _flatten(now)
        changed = sorted(k for k in set(flat_saved) | set(flat_now)
                         if flat_saved.get(k) != flat_now.get(k) and not _resumable(k))
        if changed:
            detail = ", ".join(f"{k}: {flat_saved.get(k)!r} -> {flat_now.get(k)!r}"
                               for k in changed[:5])
            raise ConfigError(f"{sweep.uri} holds a different sweep ({detail}). Rerun it with "
                              "the same file to resume, or choose another name=")
        return
    storage.write_text(uri, yaml.safe_dump(now, sort_keys=False))


def _build_tuner(sweep: Sweep, trainable: Any, concurrency: int, log: Callable[[str], None]):
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    storage_path, storage_fs = storage.ray_storage(storage.absolute(sweep.cfg.storage))
    experiment_path, _ = storage.ray_storage(sweep.uri)
    if tune.Tuner.can_restore(experiment_path, storage_filesystem=storage_fs):
        log(f"[sweep] resuming the sweep in {sweep.uri}: finished trials are kept, unfinished "
            "ones continue from their last round")
        return tune.Tuner.restore(experiment_path, trainable=trainable, resume_errored=True,
                                  storage_filesystem=storage_fs)
    scheduler = None
    if sweep.cfg.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=sweep.max_rounds,
                                  grace_period=sweep.cfg.grace_period,
                                  reduction_factor=sweep.cfg.reduction_factor)
    return tune.Tuner(
        trainable, param_space=_param_space(sweep),
        tune_config=tune.TuneConfig(
            metric="target", mode="max", num_samples=sweep.cfg.num_samples, scheduler=scheduler,
            # The generator itself limits concurrency (Tune ignores max_concurrent_trials when
            # a generator is passed), and is seeded for reproducible draws.
            search_alg=BasicVariantGenerator(max_concurrent=concurrency,
                                             random_state=sweep.cfg.seed),
            trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=sweep.cfg.name, storage_path=storage_path, storage_filesystem=storage_fs,
            verbose=0, callbacks=_make_callbacks(sweep, log),
            # One checkpoint kept per trial: the round ledger. num_to_keep=1 also makes Tune
            # save the experiment state after every trial checkpoint, so a killed sweep
            # restores with every reported round accounted for.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0)))


@contextlib.contextmanager
def _tune_environment() -> Iterator[None]:
    """Tune settings read from the environment, for the duration of one sweep only."""
    settings = {
        # Per-round checkpoints force an experiment-state save each time: intended here.
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
        # Tune's new console output prints a banner and a TensorBoard path into its temporary
        # staging directory even at verbose=0; the classic output is silent at verbose=0 and
        # SweepProgress prints one line per round instead.
        "RAY_AIR_NEW_OUTPUT": "0",
    }
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update({k: v for k, v in settings.items() if saved[k] is None})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)


def _trial_plan(sweep: Sweep, cpus: int, gpus: int, concurrency: int) -> TrialPlan:
    return TrialPlan(sweep=sweep.cfg.name, base_tree=to_dict(sweep.base),
                     trials_uri=sweep.trials_uri, cwd=sweep.cwd, metric=sweep.cfg.metric,
                     budget=sweep.cfg.budget, cpus=max(sweep.need_cpus, cpus // concurrency),
                     gpus=gpus // concurrency if sweep.need_gpus else 0)


def run_sweep(sweep: Sweep, address: str | None = None,
              log: Callable[[str], None] = print) -> SweepOutcome:
    """Run (or resume) the sweep, then write and print its report."""
    from s4al_ray.runtime import connect, dashboard_url

    _print_plan(sweep, log)
    storage.configure_endpoint(sweep.base.s3_endpoint)
    _check_sweep_dir(sweep)  # before Ray starts: a mismatched sweep directory fails fast
    # A local Ray gets the trial resource; one per CPU is more trials than can ever fit.
    cpus_hint = sweep.base.ray.num_cpus or os.cpu_count() or 1
    res = connect(sweep.base, address, custom_resources={TRIAL_RESOURCE: cpus_hint})
    concurrency = _concurrency(sweep, res.cpus, res.gpus, log)
    url = dashboard_url()
    log(f"[ray] {res.cpus} CPU, {res.gpus} GPU: {concurrency} trial(s) at a time, each needing "
        f"{sweep.need_cpus} CPU" + (f" {sweep.need_gpus} GPU" if sweep.need_gpus else "")
        + (f"; dashboard {url}" if url else ""))
    plan = _trial_plan(sweep, res.cpus, res.gpus, concurrency)
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan),
                                    _trial_resources(log))
    log(f"[sweep] results in {sweep.uri}\n[sweep] dashboards: tensorboard --logdir {sweep.uri}")
    with _tune_environment():
        results = _build_tuner(sweep, trainable, concurrency, log).fit()
    return write_report(sweep, results, log)


def _print_plan(sweep: Sweep, log: Callable[[str], None]) -> None:
    cfg = sweep.cfg
    grid = math.prod(s.grid_size for s in sweep.space.values())
    scheduler = (f"ASHA (grace {cfg.grace_period} rounds, reduction {cfg.reduction_factor})"
                 if cfg.scheduler == "asha" else "none")
    target = cfg.metric + (f" (budget {cfg.budget})" if cfg.metric == "miou_at_budget" else "")
    log(f"s4al-ray sweep '{cfg.name}': {sweep.num_trials} trial(s) = grid {grid} x "
        f"{cfg.num_samples} sample(s), {sweep.max_rounds} rounds each; target {target}; "
        f"scheduler {scheduler}")
    log(f"  base {os.path.relpath(sweep.base_path) if not storage.is_s3(sweep.base_path) else sweep.base_path}")
    for spec in sweep.space.values():
        log(f"  search {spec.describe()}")


def _rows_from_results(sweep: Sweep, results: Any) -> list[TrialRow]:
    rows = []
    for result in results:
        frame = result.metrics_dataframe
        records: list[dict] = []
        if frame is not None and "round" in frame:
            frame = frame.dropna(subset=["round"]).drop_duplicates("round", keep="last")
            records = frame.sort_values("round").to_dict("records")
        params = {k: _plain(result.config.get(k)) for k in sweep.space}
        error = str(result.error).strip().splitlines()[-1][:200] if result.error else None
        rows.append(TrialRow(trial_id=(result.metrics or {}).get("trial_id")
                             or _trial_id_from_path(result.path),
                             params=params, records=records, error=error,
                             rounds_planned=int(params.get("loop.rounds")
                                                or sweep.base.loop.rounds)))
    return rows


def write_report(sweep: Sweep, results: Any, log: Callable[[str], None] = print) -> SweepOutcome:
    keys = list(sweep.space)
    rows = score_rows(_rows_from_results(sweep, results), sweep.cfg.metric, sweep.cfg.budget)
    csv_uri = storage.join(sweep.uri, "report.csv")
    png_uri = storage.join(sweep.uri, "curves.png")
    write_report_csv(rows, keys, sweep.cfg.metric, csv_uri)
    plot_curves(rows, keys, sweep.cfg.metric,
                f"sweep '{sweep.cfg.name}': mIoU vs labeled pixels", png_uri)
    log(f"\nSweep '{sweep.cfg.name}', trials by {sweep.cfg.metric} (best first):\n"
        + format_report(rows, keys, sweep.cfg.metric))
    log(f"\nreport {csv_uri}\ncurves {png_uri}\ntensorboard --logdir {sweep.uri}")
    return SweepOutcome(sweep.uri, rows, csv_uri, png_uri, results)


def sweep_command(path: str | None, overrides: Sequence[str], address: str | None) -> int:
    """``python run.py sweep --config FILE [key=value ...]`` (keys of the sweep file)."""
    if not path:
        print("config error: sweep needs --config <sweep file>, e.g. configs/sweep_smoke.yaml",
              file=sys.stderr)
        return 2
    try:
        sweep = load_sweep(path, overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    try:
        outcome = run_sweep(sweep, address)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if any(row.error for row in outcome.rows) else 0
