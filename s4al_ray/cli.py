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

from s4al_ray import __version__

COMMANDS = {
    "run": "the active semi-supervised round loop (default)",
    "prepare": "prepare (cache) the dataset and check every sample; no Ray",
    "sweep": "a Ray Tune sweep: --config is a sweep file (configs/sweep_*.yaml)",
    "annotate": "annotate --import SOURCE: commit annotators' answers (oracle: manual)",
    "evaluate": "evaluate --checkpoint ROUND|last|FILE [--split test]: score a checkpoint",
    "serve-predictions": "a Label Studio ML backend serving the latest round's pseudo-labels",
    "sync": "copy a tree to/from S3: sync SRC DEST [--endpoint URL] (datasets, results)",
}
# configs/ of the checkout, linked as s4al_ray/configs; a wheel installs a copy there.
BUNDLED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
EXAMPLES = (
    "examples:\n"
    "  python run.py                                  # default experiment, local Ray\n"
    "  python run.py --config configs/smoke.yaml train.epochs=1\n"
    "  python run.py --dry-run acquisition.region_size=32   # check everything, run nothing\n"
    "  python run.py --help-config train              # every train.* key\n"
    "  python run.py sweep --config configs/sweep_smoke.yaml num_samples=2\n"
    "  python run.py evaluate --checkpoint last --split val   # score the last round's student\n"
    "  ray job submit -- python run.py --config configs/default.yaml storage=s3://b/p"
)


def resolve_config(path: str | None) -> str | None:
    """``--config``: a file as given; a bare name of a bundled config (``smoke``,
    ``smoke.yaml``, ``configs/smoke.yaml``) from any directory; no ``--config``: the bundled
    default. Any other path is used as given, so a mistyped path is reported, never swapped."""
    if path is None:
        default = os.path.join(BUNDLED_CONFIGS, "default.yaml")
        return default if os.path.exists(default) else None
    if path.startswith("s3://") or os.path.exists(path):
        return path
    folder, name = os.path.split(os.path.normpath(path))
    if folder not in ("", "configs"):
        return path
    bundled = os.path.join(BUNDLED_CONFIGS, name if name.endswith(".yaml") else f"{name}.yaml")
    return bundled if os.path.isfile(bundled) else path


def _parser(command: str) -> argparse.ArgumentParser:
    prog = "run.py" if command == "run" else f"run.py {command}"
    description = "S4AL+ active semi-supervised segmentation on Ray."
    if command == "run":
        description += "\n\ncommands:\n" + "\n".join(
            f"  {name:17s} {text}" for name, text in COMMANDS.items()
        )
    else:
        description = f"{COMMANDS[command]}."
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=f"python {prog} [options] [key.path=value ...]",
        description=description,
        epilog=EXAMPLES if command == "run" else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"s4al-ray {__version__}")
    if command == "sweep":
        parser.add_argument(
            "--config",
            "-c",
            default=None,
            metavar="SWEEP_FILE",
            help="the sweep file (configs/sweep_*.yaml documents every key)",
        )
    else:
        parser.add_argument(
            "--config",
            "-c",
            default=None,
            metavar="FILE",
            help="experiment YAML (default: configs/default.yaml)",
        )
    if command in ("run", "sweep", "annotate", "evaluate"):
        parser.add_argument(
            "--address",
            default=None,
            help="join this Ray cluster ('auto': the one running here); "
            "default: RAY_ADDRESS, else a new local Ray",
        )
    if command == "annotate":
        parser.add_argument(
            "--import",
            dest="import_dir",
            default=None,
            metavar="SOURCE",
            help="the annotators' answers: a folder of PNG masks, a Label Studio JSON export "
            "(.json), a CVAT for images 1.1 export (.xml, or the .zip CVAT downloads), or "
            "label-studio: export the run's project from annotation.url",
        )
    if command == "evaluate":
        parser.add_argument(
            "--checkpoint",
            default=None,
            metavar="ROUND|last|FILE",
            help="a round of this experiment, 'last', or a checkpoint file (local or s3://)",
        )
        parser.add_argument(
            "--split", default="val", help="the dataset split to score (default: val)"
        )
        parser.add_argument(
            "--predictions",
            type=int,
            default=8,
            metavar="N",
            help="write the predicted label maps of N images as PNGs (default: 8)",
        )
    if command == "serve-predictions":
        parser.add_argument(
            "--host", default="127.0.0.1", help="address to listen on (default: loopback only)"
        )
        parser.add_argument("--port", type=int, default=9090, help="port (default: 9090)")
    if command in ("run", "prepare", "annotate", "evaluate", "serve-predictions"):
        parser.add_argument(
            "--print-config", action="store_true", help="print the resolved config as YAML and exit"
        )
        parser.add_argument(
            "--help-config",
            nargs="?",
            const="",
            default=None,
            metavar="SECTION",
            help="document every config key (or a section's) and exit",
        )
    if command == "run":
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="preflight only: storage, dataset check and sizing; then exit",
        )
    what = "keys of the sweep file" if command == "sweep" else "config overrides"
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help=f"{what}, e.g. train.epochs=3 loop.rounds=2",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    from s4al_ray.config import ConfigError, load_config, to_yaml

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    if command == "sync":
        return _sync(argv)
    # Options and overrides in any order: run.py --config X a=1 --address Y b=2
    args = _parser(command).parse_intermixed_args(argv)
    if command == "sweep":  # its --config is a sweep file, validated by the sweep module
        from s4al_ray.sweep import sweep_command

        return sweep_command(
            resolve_config(args.config) if args.config else None, args.overrides, args.address
        )
    try:
        if args.help_config is not None:
            from s4al_ray.config_help import describe_config

            print(describe_config(args.help_config or None))
            return 0
        cfg = load_config(resolve_config(args.config), args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if command == "prepare":
        return _prepare(cfg)
    if command == "annotate":
        from s4al_ray.annotate import annotate_command

        return annotate_command(cfg, args.import_dir, args.address)
    if command == "serve-predictions":
        from s4al_ray.serve_predictions import serve_command

        return serve_command(cfg, args.host, args.port)
    if command == "evaluate":
        from s4al_ray.evaluate_command import evaluate_command

        return evaluate_command(cfg, args.checkpoint, args.split, args.predictions, args.address)
    return _run(cfg, args.address, dry_run=args.dry_run)


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

    parser = argparse.ArgumentParser(
        prog="run.py sync", description="copy a directory tree to or from s3://"
    )
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


def _run(cfg, address: str | None, dry_run: bool = False) -> int:
    from s4al_ray.config import ConfigError
    from s4al_ray.data.folder import DatasetError
    from s4al_ray.experiment import Experiment
    from s4al_ray.runtime import (
        check_cluster_paths,
        check_fits,
        connect,
        dashboard_url,
        planned_resources,
        target_address,
    )
    from s4al_ray.storage import StorageError, configure_endpoint

    print(
        f"s4al-ray: experiment '{cfg.name}' -> {cfg.storage}/{cfg.name}"
        + ("  (dry run: nothing is trained or written)" if dry_run else "")
    )
    configure_endpoint(cfg.s3_endpoint)
    experiment = Experiment(cfg)
    try:
        res = None
        if target_address(cfg, address):  # a cluster: its shape decides which paths can work
            res = connect(cfg, address)
            check_cluster_paths(cfg, res)
        # Bad config, storage or data fail here, before a local Ray starts.
        experiment.preflight(record=not dry_run)
        if dry_run:
            res = res or planned_resources(cfg, address)
            check_fits(cfg, res)
            print(
                f"[dry run] ok: the trainer fits {res.cpus} CPU, {res.gpus} GPU; "
                f"run without --dry-run to start"
            )
            return 0
        res = connect(cfg, address)
        url = dashboard_url()
        print(f"[ray] {res.cpus} CPU, {res.gpus} GPU" + (f", dashboard {url}" if url else ""))
        experiment.run()  # sized before each stage for the cluster as it is then
    except (ConfigError, DatasetError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
