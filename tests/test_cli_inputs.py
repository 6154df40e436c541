"""The command line as a new user meets it: every bad config gets a message, not a traceback.

Every case runs ``cli.main`` in this process (no Ray unless the command needs it) and checks the
exit status, that the message names the key or file and the fix, and that no traceback leaked.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import yaml

from s4al_ray import __version__, cli


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as stop:  # argparse: --help, --version, usage errors
        code = stop.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_options_and_overrides_in_any_order(capsys):
    code, out, _ = run_cli(
        capsys,
        "--config",
        "configs/smoke.yaml",
        "train.epochs=1",
        "--print-config",
        "loop.rounds=1",
        "--address",
        "auto",
        "seed=3",
    )
    assert code == 0
    cfg = yaml.safe_load(out)
    assert (cfg["train"]["epochs"], cfg["loop"]["rounds"], cfg["seed"]) == (1, 1, 3)
    assert cfg["name"] == "smoke"


def test_version_and_subcommand_help(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and __version__ in out
    code, out, _ = run_cli(capsys, "sweep", "--help")
    assert code == 0 and "SWEEP_FILE" in out and "keys of the sweep file" in out
    code, out, _ = run_cli(capsys, "annotate", "--help")
    assert code == 0 and "--import SOURCE" in out


def test_help_config_documents_every_key(capsys):
    code, out, _ = run_cli(capsys, "--help-config")
    assert code == 0
    for key in ("train.head_lr_mult", "reco.num_queries", "data.synthetic.height", "ray.address"):
        assert key in out
    code, out, _ = run_cli(capsys, "--help-config", "teacher")
    assert code == 0 and "teacher.class_quantile" in out and "train.lr" not in out
    code, _, err = run_cli(capsys, "--help-config", "trian")
    assert code == 2 and "did you mean 'train'" in err


def test_scientific_notation_everywhere(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "--print-config", "train.lr=1e-3")
    assert code == 0 and yaml.safe_load(out)["train"]["lr"] == pytest.approx(0.001)
    path = tmp_path / "lr.yaml"
    path.write_text("train:\n  lr: 5e-3\n  weight_decay: 1E-5\n")
    code, out, _ = run_cli(capsys, "--config", str(path), "--print-config")
    assert code == 0
    assert yaml.safe_load(out)["train"]["lr"] == pytest.approx(0.005)


def test_scientific_notation_in_sweep_bounds(tmp_path):
    from s4al_ray.sweep import load_sweep

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"name: lr\nbase: {os.path.abspath('configs/smoke.yaml')}\n"
        "search_space:\n  train.lr: {loguniform: [1e-4, 1e-2]}\n"
    )
    loaded = load_sweep(str(sweep))
    assert list(loaded.space["train.lr"].values) == [1e-4, 1e-2]


@pytest.mark.parametrize(
    "text, fragment",
    [
        (
            "train:\n  epochs: 2\nloop:\n  rounds: 1\ntrain:\n  lr: 0.1\n",
            r"line 5: duplicate key 'train' \(first at line 1\)",
        ),
        ("train:\n  epochs: 2\n  epochs: 3\n", r"line 3: duplicate key 'epochs'"),
        ("train: [\n", "not valid YAML"),
        ("- train\n- loop\n", "the top level must be a mapping"),
        ("train:\n  epochz: 3\n", "did you mean 'epochs'"),
    ],
)
def test_bad_config_files_name_the_file(capsys, tmp_path, text, fragment):
    import re

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, _, err = run_cli(capsys, "--config", str(path), "--print-config")
    assert code == 2 and str(path) in err and re.search(fragment, err), err


def test_override_errors_say_command_line(capsys):
    code, _, err = run_cli(capsys, "--config", "configs/smoke.yaml", "train.epochs=abc")
    assert code == 2
    assert "train.epochs: expected int" in err and "(command line: train.epochs)" in err
    assert "smoke.yaml" not in err
    code, _, err = run_cli(capsys, "--config", "configs/smoke.yaml", "acquisition.region_size=x")
    assert "(command line: acquisition.region_size)" in err


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("storage=s3://", "storage: 's3://' names no bucket; write s3://bucket/prefix"),
        ("storage=s3:///prefix", "names no bucket"),
        ("storage=s3:/bucket/x", "is not an S3 URI; write s3://bucket/prefix"),
        ("data.root=s3://Bad_Bucket/x", "not a valid S3 bucket name"),
        ("data.cache_dir=s3://", "data.cache_dir: 's3://' names no bucket"),
        ("s3_endpoint=localhost:9000", "s3_endpoint: 'localhost:9000' must be a URL"),
    ],
)
def test_storage_uris_checked_at_load(capsys, override, fragment):
    code, _, err = run_cli(capsys, "--print-config", override)
    assert code == 2 and fragment in err


def test_config_that_is_a_directory(capsys):
    code, _, err = run_cli(capsys, "--config", "configs")
    assert code == 2 and "is a directory; pass a YAML file" in err


def test_bundled_config_by_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout: configs/ is not here
    code, out, _ = run_cli(capsys, "--config", "smoke", "--print-config")
    assert code == 0 and yaml.safe_load(out)["name"] == "smoke"
    code, out, _ = run_cli(capsys, "--print-config")
    assert code == 0 and yaml.safe_load(out)["name"] == "default"
    code, _, err = run_cli(capsys, "--config", "nothing_like_this.yaml")
    assert code == 2 and "not found" in err


def test_defaults_are_the_default_config():
    """A non-editable install without configs/ must not fall back to other numbers."""
    from s4al_ray.config import load_config

    assert load_config(None) == load_config("configs/default.yaml")


def _digest(root: str) -> dict[str, str]:
    out = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def test_dry_run_checks_sizing_and_writes_nothing(capsys, tmp_path, smoke_data_root):
    before = _digest(smoke_data_root)
    args = (
        "--dry-run",
        "--config",
        "configs/smoke.yaml",
        f"storage={tmp_path / 'runs'}",
        "data.kind=folder",
        f"data.root={smoke_data_root}",
    )
    code, out, err = run_cli(capsys, *args, "train.num_workers=5", "ray.num_cpus=2")
    assert code == 2 and "train.num_workers=5 x train.cpus_per_worker=1 needs 5 CPUs" in err
    code, out, _ = run_cli(capsys, *args, "ray.num_cpus=2")
    assert code == 0 and "[dry run] ok" in out
    assert not (tmp_path / "runs").exists()
    assert _digest(smoke_data_root) == before


def test_every_config_key_is_read_somewhere():
    """A declared key that no code reads does nothing (train.head_lr_mult once did): every leaf
    name must be read as an attribute outside the schema."""
    import ast
    import dataclasses
    import typing

    from s4al_ray import config_schema

    package = os.path.dirname(config_schema.__file__)
    read = set()
    for directory, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py") and name not in ("config_schema.py", "config_help.py"):
                tree = ast.parse(open(os.path.join(directory, name), encoding="utf-8").read())
                read |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}

    def unread(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from unread(hints[f.name], f"{prefix}{f.name}.")
            elif f.name not in read:
                yield prefix + f.name

    assert not list(unread(config_schema.ExperimentConfig))


def test_head_lr_mult_reaches_the_optimizer():
    from s4al_ray.config import load_config
    from s4al_ray.model import model_from_config
    from s4al_ray.student import make_optimizer

    cfg = load_config("configs/smoke.yaml", ["train.head_lr_mult=3", "train.lr=0.02"])
    model = model_from_config(cfg.model, 4, "none")
    optimizer = make_optimizer(model, cfg.train)
    assert [g["lr_mult"] for g in optimizer.param_groups] == [1.0, 3.0]


def test_non_editable_install_finds_its_configs(tmp_path):
    """The wheel carries configs/ as s4al_ray/configs: an installed copy run from another
    directory loads the real default config, not the schema's fallback values."""
    import shutil
    import subprocess
    import sys

    pytest.importorskip("setuptools")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = tmp_path / "src"  # a copy: building writes build/ and egg-info next to the sources
    shutil.copytree(
        repo,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "runs", "data_cache", "build", "*.egg-info", "__pycache__"
        ),
    )
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import s4al_ray.cli as c; "
        "assert c.__file__.startswith(sys.argv[1]), c.__file__; "
        "sys.exit(c.main(['--config', 'smoke', '--print-config']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["name"] == "smoke"
    installed = target / "s4al_ray" / "configs" / "default.yaml"
    assert installed.read_text() == open(os.path.join(repo, "configs", "default.yaml")).read()
