"""Command line: ``python run.py [command] [--config FILE] [key.path=value ...]``.

Parses, loads and validates the config (before any Ray work), connects to Ray and calls one
command. Nothing else lives here, but for ``prepare`` (load the dataset, check it, print the
report): short, and the one place that may know both the data modules and the registry.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

COMMANDS = {"run": "the active semi-supervised round loop (default)",
            "prepare": "prepare (cache) the dataset and check every sample; no Ray",
            "sweep": "a Ray Tune sweep: --config is a sweep file (configs/sweep_*.yaml)",
            "annotate": "annotate --import FOLDER: commit annotators' masks (oracle: manual)",
            "sync": "copy a tree to/from S3: sync SRC DEST [--endpoint URL] (datasets, results)"}
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "default.yaml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py", usage="python run.py [COMMAND] [--config FILE] [key.path=value ...]",
        description="S4AL+ active semi-supervised segmentation on Ray.\n\ncommands:\n"
                    + "\n".join(f"  {name:9s} {text}" for name, text in COMMANDS.items()),
        epilog="examples:\n"
               "  python run.py                                  # default experiment, local Ray\n"
               "  python run.py --config configs/smoke.yaml train.epochs=1\n"
               "  python run.py sweep --config configs/sweep_smoke.yaml num_samples=2\n"
               "  ray job submit -- python run.py --config configs/default.yaml storage=s3://b/p",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", default=None,
                        help="experiment YAML (default: configs/default.yaml)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (else RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--import", dest="import_dir", default=None, metavar="FOLDER",
                        help="annotate: the folder of returned PNG masks")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="config overrides, e.g. train.epochs=3 loop.rounds=2")
    return parser


def main(argv: list[str] | None = None) -> int:
    from s4al_ray.config import ConfigError, load_config

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    if command == "sync":
        return _sync(argv)
    args = _parser().parse_args(argv)
    if command == "sweep":  # its --config is a sweep file, validated by the sweep module
        from s4al_ray.sweep import sweep_command

        return sweep_command(args.config, args.overrides, args.address)
    path = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    try:
        cfg = load_config(path, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if command == "prepare":
        return _prepare(cfg)
    if command == "annotate":
        from s4al_ray.annotate import annotate_command

        return annotate_command(cfg, args.import_dir, args.address)
    return _run(cfg, args.address)


def _prepare(cfg, log: Callable[[str], None] = print) -> int:
    """``python run.py prepare``: build the cache if needed, check every sample, print the report.

    Returns the exit status: 1 when the dataset cannot be loaded or the check finds errors.
    Needs no Ray, so it can run on a laptop or a data node before a cluster is paid for.
    """
    from s4al_ray import storage
    from s4al_ray.data.check import check_dataset
    from s4al_ray.data.folder import DatasetError
    from s4al_ray.data.prepare import cache_warnings
    from s4al_ray.data.registry import cache_spec, load_dataset

    storage.configure_endpoint(cfg.s3_endpoint)  # as a run does
    log(f"[prepare] {cfg.data.kind} dataset at {cfg.data.root}")
    try:
        info = load_dataset(cfg.data, cfg.seed, log)
    except DatasetError as err:
        log(f"error: {err}")
        return 1
    report = check_dataset(info)
    spec = cache_spec(cfg.data)
    if spec is not None:
        report.warnings[:0] = cache_warnings(spec, cfg.data.cache_dir)
    log(report.format())
    return 1 if report.errors else 0


def _sync(argv: list[str]) -> int:
    from s4al_ray.transfer import sync

    parser = argparse.ArgumentParser(prog="run.py sync",
                                     description="copy a directory tree to or from s3://")
    parser.add_argument("source")
    parser.add_argument("destination")
    parser.add_argument("--endpoint", default=None, help="S3-compatible endpoint URL")
    args = parser.parse_args(argv)
    try:
        sync(args.source, args.destination, args.endpoint)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _run(cfg, address: str | None) -> int:
    from s4al_ray.config import ConfigError
    from s4al_ray.data.folder import DatasetError
    from s4al_ray.experiment import Experiment
    from s4al_ray.runtime import connect, dashboard_url
    from s4al_ray.storage import StorageError, configure_endpoint

    print(f"s4al-ray: experiment '{cfg.name}' -> {cfg.storage}/{cfg.name}")
    configure_endpoint(cfg.s3_endpoint)
    experiment = Experiment(cfg)
    try:
        experiment.preflight()  # bad config, storage or data fail here, before Ray starts
        res = connect(cfg, address)
        url = dashboard_url()
        print(f"[ray] {res.cpus} CPU, {res.gpus} GPU" + (f", dashboard {url}" if url else ""))
        experiment.resources = res
        experiment.run()
    except (ConfigError, DatasetError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
