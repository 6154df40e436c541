"""The sweep file: its schema, the search space, and validation of every trial's config.

A sweep file names a base experiment config, dotted overrides, a search space and a target::

    base: smoke.yaml                      # relative to this file, else to the working directory
    overrides: {data.root: data_cache/synthetic_smoke}
    search_space:
      acquisition.round_budget: {grid: [0.03, 0.05]}
      train.reco_weight: {choice: [0.0, 0.1]}
    num_samples: 1
    metric: auc                           # final_miou | auc | miou_at_budget (with budget: 0.12)

Everything is validated here, and every grid combination built into a full experiment config,
before Ray starts; :mod:`s4al_ray.sweep` then runs the trials with Ray Tune. Ray is imported only
to turn a :class:`Spec` into a Tune domain, so loading a sweep file needs no cluster.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from s4al_ray import storage
from s4al_ray.config import (
    ConfigError,
    ExperimentConfig,
    build_config,
    flatten,
    from_dict,
    parse_override,
    read_yaml,
    set_dotted,
    setting,
    to_dict,
)
from s4al_ray.sweep_report import METRICS

SPEC_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
# Above this many corners of the space, each key's values are checked on their own instead.
MAX_CHECKED_COMBOS = 4096


@dataclass
class SweepConfig:
    name: str = setting("sweep", doc="sweep name; results in <storage>/<name>")
    base: str = setting("", doc="experiment config the trials start from")
    overrides: dict = setting({}, doc="dotted experiment keys -> values applied to the base")
    search_space: dict = setting(
        {}, doc="dotted experiment key -> {grid|choice|uniform|loguniform|randint: ...}"
    )
    num_samples: int = setting(1, lo=1, doc="samples of the space (each covers the whole grid)")
    metric: str = setting("final_miou", choices=METRICS)
    budget: float = setting(0.1, lo=0.0, hi=1.0, doc="labeled fraction for miou_at_budget")
    scheduler: str = setting("none", choices=("none", "asha"))
    grace_period: int = setting(1, lo=1, doc="ASHA: rounds before a trial may be stopped")
    reduction_factor: int = setting(2, lo=2, doc="ASHA: keep 1/reduction_factor per rung")
    storage: str = setting("", doc="local dir or s3:// URI; empty = the base config's storage")
    max_concurrent_trials: int = setting(0, lo=0, doc="0 = as many as the cluster's CPUs/GPUs fit")
    seed: int = setting(0, doc="seed of the random search")


# -- The search space


@dataclass(frozen=True)
class Spec:
    key: str
    kind: str
    values: tuple

    @classmethod
    def parse(cls, key: str, raw: Any) -> "Spec":
        where = f"search_space.{key}"
        usage = (
            "expected one of {grid: [..]}, {choice: [..]}, {uniform: [lo, hi]}, "
            "{loguniform: [lo, hi]}, {randint: [lo, hi]}"
        )
        if not isinstance(raw, dict) or len(raw) != 1:
            raise ConfigError(f"{where}: {usage}, got {raw!r} (constants go under overrides:)")
        ((kind, values),) = raw.items()
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
        """The Tune search domain (Tune imported here only: validation does not need it)."""
        from ray import tune

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
    numbers = len(values) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    )
    if not numbers:
        raise ConfigError(f"{where}: {kind} needs [lo, hi], got {values!r}")
    lo, hi = values
    if kind == "randint" and not all(isinstance(v, int) for v in values):
        raise ConfigError(f"{where}: randint bounds must be integers, got {values!r}")
    if (hi < lo) if kind == "randint" else (hi <= lo):
        raise ConfigError(f"{where}: {kind} needs lo < hi, got {values!r}")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}: loguniform needs lo > 0, got {values!r}")


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
    leaves = list(flatten(to_dict(ExperimentConfig())))
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


# -- Loading and validating a sweep


@dataclass
class Sweep:
    cfg: SweepConfig
    path: str
    base_path: str
    base: ExperimentConfig  # base + overrides, validated
    space: dict[str, Spec]
    cwd: str = field(default_factory=os.getcwd)
    need_cpus: int = 1  # the most CPUs any trial's trainer/teacher needs at once
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
        set_dotted(tree, key, value)
    try:
        cfg = build_config(SweepConfig, tree)
    except ConfigError as err:
        raise ConfigError(f"{err} (in {path})") from None
    if not cfg.name or "/" in cfg.name or cfg.name.startswith("."):
        raise ConfigError(f"name: {cfg.name!r} must be a plain directory name (in {path})")
    base_path = _resolve_base(cfg.base, path)
    base_tree = read_yaml(base_path)
    for key, value in flatten(cfg.overrides).items():
        set_dotted(base_tree, key, value)
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
        raise ConfigError(
            f"grace_period ({cfg.grace_period}) must be below loop.rounds "
            f"({sweep.max_rounds}), or ASHA can never stop a trial"
        )


def _validate_space(sweep: Sweep) -> None:
    """Every key a config key, every value valid for it, every combination a valid config."""
    base_tree = to_dict(sweep.base)
    representative = {k: s.candidates()[0] for k, s in sweep.space.items()}
    for key, spec in sweep.space.items():
        for value in spec.candidates():
            try:
                build_config(
                    ExperimentConfig, with_values(base_tree, {**representative, key: value})
                )
            except ConfigError as err:
                hint = (
                    " (use randint for an integer key)"
                    if spec.kind in ("uniform", "loguniform") and "expected int" in str(err)
                    else ""
                )
                raise ConfigError(f"search_space.{key} = {value!r}: {err}{hint}") from None
    needs = [
        _needs(_combination_config(base_tree, combo, sweep.cfg.name))
        for combo in _combinations(sweep.space)
    ]
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
        return from_dict(with_values(base_tree, {**combo, "name": f"{name}-check"}))
    except ConfigError as err:
        values = ", ".join(f"{k}={v!r}" for k, v in combo.items())
        raise ConfigError(
            f"search_space: the combination {values} is not a valid experiment: {err}"
        ) from None


def with_values(tree: dict, values: dict[str, Any]) -> dict:
    """A copy of the config tree with dotted ``values`` set: the base is shared by all trials."""
    out = copy.deepcopy(tree)
    for key, value in values.items():
        set_dotted(out, key, value)
    return out


def _needs(cfg: ExperimentConfig) -> tuple[int, int]:
    """(CPUs, GPUs) a trial needs at once: its trainer, or its smallest teacher pool."""
    train = cfg.train
    train_cpus = max(train.num_workers, 1) * train.cpus_per_worker
    cpus = max(train_cpus, cfg.teacher.cpus_per_actor * max(cfg.teacher.num_actors, 1))
    return cpus, (max(train.num_workers, 1) if train.use_gpu else 0)


# -- A trial's experiment config, as the trial builds it (see s4al_ray.sweep.TrialPlan)


def plain_value(value: Any) -> Any:
    """Tune samples numpy scalars; the config wants Python ones."""
    return value.item() if hasattr(value, "item") else value


def absolute_paths(tree: dict, cwd: str) -> None:
    """Trials run in Tune's trial directory: make relative local paths the driver's."""
    data = tree.setdefault("data", {})
    for key in ("root", "cache_dir"):
        value = data.get(key)
        if value and not storage.is_s3(value) and not os.path.isabs(value):
            data[key] = os.path.join(cwd, value)
    pretrained = tree.get("model", {}).get("pretrained", "none")
    if (
        pretrained not in ("none", "imagenet")
        and not storage.is_s3(pretrained)
        and not os.path.isabs(pretrained)
    ):
        tree["model"]["pretrained"] = os.path.join(cwd, pretrained)
