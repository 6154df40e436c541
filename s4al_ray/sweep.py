"""Ray Tune sweeps: many experiments (whole round loops) over a search space of config keys.

The sweep file, its search space and their validation are :mod:`s4al_ray.sweep_space`; this
module runs a loaded :class:`Sweep`. Each Tune trial is a plain function that runs
:class:`Experiment` (Ray Train student, Ray Data teacher, its own pool actor) and reports one
Tune result per round.

Resume: a trial's experiment is named ``<sweep>-<trial id>`` under ``<sweep dir>/trials``; Tune
keeps trial ids on restore, so a restored trial finds its own run directory and the round loop
skips finished rounds. A one-file Tune checkpoint per report records the last round reported, so
a resumed trial reports each round exactly once (and Tune restores its result log from it).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from ray import tune

from s4al_ray import storage
from s4al_ray.config import ConfigError, changed_keys, flatten, to_dict
from s4al_ray.sweep_callbacks import (
    RoundTensorBoard,
    SweepProgress,
    make_callbacks,
    round_metrics,
    trial_dirname,
)
from s4al_ray.sweep_report import (
    TrialRow,
    format_report,
    plot_curves,
    score_rows,
    write_report_csv,
)
from s4al_ray.sweep_space import Spec, Sweep, load_sweep, plain_value
from s4al_ray.sweep_trial import TrialPlan, run_trial
from s4al_ray.tracking import SweepTracking, TrackingParent
from s4al_ray.yamlfile import YamlError, dump_yaml, load_yaml

# The sweep's API, with what callers (the CLI, tests) import from here though it lives in
# sweep_space (Spec, Sweep, load_sweep), and the Tune hooks of sweep_callbacks: a sweep
# started before they moved there has them pickled as s4al_ray.sweep.<name>, and restores.
__all__ = [
    "RoundTensorBoard",
    "Spec",
    "Sweep",
    "SweepOutcome",
    "SweepProgress",
    "TrialPlan",
    "load_sweep",
    "round_metrics",
    "run_sweep",
    "run_trial",
    "sweep_command",
    "trial_dirname",
    "write_report",
]

TRIAL_RESOURCE = "s4al_trial"
# Fallback trial reservation when the cluster has no TRIAL_RESOURCE: a trial's own process is a
# light driver, and a CPU reservation would starve its trainer on small machines.
FALLBACK_TRIAL_MEMORY = 256 * 1024 * 1024
SWEEP_FILE = "sweep.yaml"
# Keys of the saved sweep spec that may change between a sweep and its resumption: where the
# base file lives, concurrency, and what each trial overrides anyway (its name); experiment keys
# an experiment may resume with (s4al_ray.resume.RESUMABLE_KEYS) are accepted too.
RESUMABLE_SWEEP_KEYS = ("max_concurrent_trials", "base", "base_config.name")


def _trial_id_from_path(path: str) -> str:
    match = re.match(r"[0-9a-f]+_\d{5}", os.path.basename(path.rstrip("/")))
    return match.group(0) if match else os.path.basename(path.rstrip("/"))


# -- Running a sweep (driver)


@dataclass
class SweepOutcome:
    uri: str
    rows: list[TrialRow]
    report_csv: str
    curves_png: str
    results: Any = None  # Tune's ResultGrid


def _trial_resources(log: Callable[[str], None]) -> dict:
    """A trial's own reservation. Not a CPU: its trainer and teacher reserve theirs, and on a
    small machine a CPU held by every trial driver would leave the trainers none."""
    import ray

    if ray.cluster_resources().get(TRIAL_RESOURCE, 0) >= 1:
        return {"CPU": 0, TRIAL_RESOURCE: 1}
    log(
        f"[sweep] the cluster has no '{TRIAL_RESOURCE}' resource; each trial reserves "
        f"{FALLBACK_TRIAL_MEMORY >> 20} MiB of memory instead (start nodes with "
        f"--resources='{{\"{TRIAL_RESOURCE}\": N}}' to cap trials per node)"
    )
    return {"CPU": 0, "memory": FALLBACK_TRIAL_MEMORY}


def _concurrency(sweep: Sweep, cpus: int, gpus: int, log: Callable[[str], None]) -> int:
    fits = cpus // sweep.need_cpus
    if sweep.need_gpus:
        fits = min(fits, gpus // sweep.need_gpus)
    fits = max(fits, 1)
    wanted = sweep.cfg.max_concurrent_trials
    if wanted and wanted > fits:
        log(
            f"[sweep] max_concurrent_trials={wanted} but the cluster fits {fits} trial(s) "
            f"({sweep.need_cpus} CPU each): the extra trials' trainers will wait for resources"
        )
    return wanted or fits


def _param_space(sweep: Sweep) -> dict:
    return {key: spec.domain() for key, spec in sweep.space.items()}


def _saved_spec(sweep: Sweep) -> dict:
    spec = to_dict(sweep.cfg)
    spec["search_space"] = {k: {s.kind: list(s.values)} for k, s in sweep.space.items()}
    spec["overrides"] = flatten(sweep.cfg.overrides)
    spec["base_config"] = to_dict(sweep.base)
    return spec


def _resumable(key: str) -> bool:
    from s4al_ray.resume import RESUMABLE_KEYS

    return key in RESUMABLE_SWEEP_KEYS or key.startswith(
        tuple(f"base_config.{k}" for k in RESUMABLE_KEYS)
    )


def _check_sweep_dir(sweep: Sweep) -> None:
    """Refuse to resume a sweep directory that holds a different sweep; else record this one."""
    uri = storage.join(sweep.uri, SWEEP_FILE)
    now = _saved_spec(sweep)
    if storage.exists(uri):
        try:
            saved = load_yaml(storage.read_text(uri), uri) or {}
        except YamlError as err:
            raise ConfigError(
                f"{err}; this sweep directory is damaged: use another name="
            ) from None
        flat_saved, flat_now = flatten(saved), flatten(now)
        changed = changed_keys(flat_saved, flat_now, _resumable)
        if changed:
            detail = ", ".join(
                f"{k}: {flat_saved.get(k)!r} -> {flat_now.get(k)!r}" for k in changed[:5]
            )
            raise ConfigError(
                f"{sweep.uri} holds a different sweep ({detail}). Rerun it with "
                "the same file to resume, or choose another name="
            )
        return
    storage.write_text(uri, dump_yaml(now))


def _build_tuner(sweep: Sweep, trainable: Any, concurrency: int, log: Callable[[str], None]):
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    storage_path, storage_fs = storage.ray_storage(storage.absolute(sweep.cfg.storage))
    experiment_path, _ = storage.ray_storage(sweep.uri)
    if tune.Tuner.can_restore(experiment_path, storage_filesystem=storage_fs):
        log(
            f"[sweep] resuming the sweep in {sweep.uri}: finished trials are kept, unfinished "
            "ones continue from their last round"
        )
        return tune.Tuner.restore(
            experiment_path, trainable=trainable, resume_errored=True, storage_filesystem=storage_fs
        )
    scheduler = None
    if sweep.cfg.scheduler == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=sweep.max_rounds,
            grace_period=sweep.cfg.grace_period,
            reduction_factor=sweep.cfg.reduction_factor,
        )
    return tune.Tuner(
        trainable,
        param_space=_param_space(sweep),
        tune_config=tune.TuneConfig(
            metric="target",
            mode="max",
            num_samples=sweep.cfg.num_samples,
            scheduler=scheduler,
            # The generator itself limits concurrency (Tune ignores max_concurrent_trials when
            # a generator is passed), and is seeded for reproducible draws.
            search_alg=BasicVariantGenerator(
                max_concurrent=concurrency, random_state=sweep.cfg.seed
            ),
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=sweep.cfg.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            verbose=0,
            callbacks=make_callbacks(sweep, log),
            # One checkpoint kept per trial: the round ledger. num_to_keep=1 also makes Tune
            # save the experiment state after every trial checkpoint, so a killed sweep
            # restores with every reported round accounted for.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


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


def _trial_plan(
    sweep: Sweep, cpus: int, gpus: int, concurrency: int, parent: TrackingParent | None
) -> TrialPlan:
    return TrialPlan(
        sweep=sweep.cfg.name,
        base_tree=to_dict(sweep.base),
        trials_uri=sweep.trials_uri,
        cwd=sweep.cwd,
        metric=sweep.cfg.metric,
        budget=sweep.cfg.budget,
        cpus=max(sweep.need_cpus, cpus // concurrency),
        gpus=gpus // concurrency if sweep.need_gpus else 0,
        tracking_parent=parent,
    )


def _sweep_params(sweep: Sweep) -> dict[str, str]:
    """The sweep's own settings and search space, as its tracked run's params."""
    params = {
        f"sweep.{k}": str(v) for k, v in sorted(to_dict(sweep.cfg).items()) if k != "search_space"
    }
    params.update({f"search.{k}": f"{s.kind} {list(s.values)}" for k, s in sweep.space.items()})
    return params


def run_sweep(
    sweep: Sweep, address: str | None = None, log: Callable[[str], None] = print
) -> SweepOutcome:
    """Run (or resume) the sweep, then write and print its report."""
    from s4al_ray.runtime import check_cluster_paths, connect, dashboard_url

    _print_plan(sweep, log)
    storage.configure_endpoint(sweep.base.s3_endpoint)
    _check_sweep_dir(sweep)  # before Ray starts: a mismatched sweep directory fails fast
    # A local Ray gets the trial resource; one per CPU is more trials than can ever fit.
    cpus_hint = sweep.base.ray.num_cpus or os.cpu_count() or 1
    res = connect(sweep.base, address, custom_resources={TRIAL_RESOURCE: cpus_hint})
    check_cluster_paths(sweep.base, res)  # trials on other nodes read and write these paths
    concurrency = _concurrency(sweep, res.cpus, res.gpus, log)
    url = dashboard_url()
    log(
        f"[ray] {res.cpus} CPU, {res.gpus} GPU: {concurrency} trial(s) at a time, each needing "
        f"{sweep.need_cpus} CPU"
        + (f" {sweep.need_gpus} GPU" if sweep.need_gpus else "")
        + (f"; dashboard {url}" if url else "")
    )
    tracked = SweepTracking(sweep.base, sweep.cfg.name, sweep.uri, _sweep_params(sweep))
    plan = _trial_plan(sweep, res.cpus, res.gpus, concurrency, tracked.parent)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, plan=plan), _trial_resources(log)
    )
    log(f"[sweep] results in {sweep.uri}\n[sweep] dashboards: tensorboard --logdir {sweep.uri}")
    with _tune_environment():
        results = _build_tuner(sweep, trainable, concurrency, log).fit()
    outcome = write_report(sweep, results, log)
    targets = [row.target for row in outcome.rows if math.isfinite(row.target)]
    best = {"best/target": max(targets)} if targets else {}
    tracked.close(best, [outcome.report_csv, outcome.curves_png], ok=not results.errors)
    return outcome


def _print_plan(sweep: Sweep, log: Callable[[str], None]) -> None:
    cfg = sweep.cfg
    grid = math.prod(s.grid_size for s in sweep.space.values())
    scheduler = (
        f"ASHA (grace {cfg.grace_period} rounds, reduction {cfg.reduction_factor})"
        if cfg.scheduler == "asha"
        else "none"
    )
    target = cfg.metric + (f" (budget {cfg.budget})" if cfg.metric == "miou_at_budget" else "")
    log(
        f"s4al-ray sweep '{cfg.name}': {sweep.num_trials} trial(s) = grid {grid} x "
        f"{cfg.num_samples} sample(s), {sweep.max_rounds} rounds each; target {target}; "
        f"scheduler {scheduler}"
    )
    base = sweep.base_path if storage.is_s3(sweep.base_path) else os.path.relpath(sweep.base_path)
    log(f"  base {base}")
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
        params = {k: plain_value(result.config.get(k)) for k in sweep.space}
        error = str(result.error).strip().splitlines()[-1][:200] if result.error else None
        rows.append(
            TrialRow(
                trial_id=(result.metrics or {}).get("trial_id") or _trial_id_from_path(result.path),
                params=params,
                records=records,
                error=error,
                rounds_planned=int(params.get("loop.rounds") or sweep.base.loop.rounds),
            )
        )
    return rows


def write_report(sweep: Sweep, results: Any, log: Callable[[str], None] = print) -> SweepOutcome:
    keys = list(sweep.space)
    rows = score_rows(_rows_from_results(sweep, results), sweep.cfg.metric, sweep.cfg.budget)
    csv_uri = storage.join(sweep.uri, "report.csv")
    png_uri = storage.join(sweep.uri, "curves.png")
    write_report_csv(rows, keys, sweep.cfg.metric, csv_uri)
    plot_curves(
        rows, keys, sweep.cfg.metric, f"sweep '{sweep.cfg.name}': mIoU vs labeled pixels", png_uri
    )
    log(
        f"\nSweep '{sweep.cfg.name}', trials by {sweep.cfg.metric} (best first):\n"
        + format_report(rows, keys, sweep.cfg.metric)
    )
    log(f"\nreport {csv_uri}\ncurves {png_uri}\ntensorboard --logdir {sweep.uri}")
    return SweepOutcome(sweep.uri, rows, csv_uri, png_uri, results)


def sweep_command(path: str | None, overrides: Sequence[str], address: str | None) -> int:
    """``python run.py sweep --config FILE [key=value ...]`` (keys of the sweep file)."""
    if not path:
        print(
            "config error: sweep needs --config <sweep file>, e.g. configs/sweep_smoke.yaml",
            file=sys.stderr,
        )
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
