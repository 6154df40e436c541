"""The run directory: one layout, refused in another format, untouched by a failed preflight."""

from __future__ import annotations

import json
import os

import pytest

from s4al_ray.config import ConfigError, load_config
from s4al_ray.experiment import Experiment
from s4al_ray.layout import RUN_FORMAT, RunLayout


def _cfg(storage: str, data_root: str, *extra: str):
    return load_config(
        "configs/smoke.yaml",
        [f"storage={storage}", "data.kind=folder", f"data.root={data_root}", "name=layout", *extra],
    )


def test_paths_are_under_the_run_dir():
    layout = RunLayout("s3://bucket/runs/exp")
    assert layout.checkpoint(3) == "s3://bucket/runs/exp/checkpoints/round_003.pt"
    assert layout.teacher(0) == "s3://bucket/runs/exp/teacher/round_000"
    assert layout.teacher_summary(0) == "s3://bucket/runs/exp/teacher/round_000.json"
    assert layout.oracle_label("a b") == "s3://bucket/runs/exp/oracle/labels/a b.png"
    assert RunLayout.of("runs", "x").run_dir == os.path.abspath(os.path.join("runs", "x"))


def test_failed_preflight_writes_nothing_and_the_fixed_rerun_starts(tmp_path, smoke_data_root):
    """A region larger than the images fails after the dataset is read; the corrected rerun
    must not be refused as "a different config"."""
    run_dir = tmp_path / "layout"
    with pytest.raises(ConfigError, match="acquisition.region_size"):
        Experiment(
            _cfg(str(tmp_path), smoke_data_root, "acquisition.region_size=70"),
            log=lambda line: None,
        ).preflight()
    assert not run_dir.exists() or not any(run_dir.rglob("*"))
    experiment = Experiment(_cfg(str(tmp_path), smoke_data_root), log=lambda line: None)
    experiment.preflight()
    layout = experiment.layout
    assert json.loads(open(layout.marker).read()) == {"format": RUN_FORMAT}
    assert os.path.exists(layout.config)


def test_run_of_another_format_is_refused_by_name(tmp_path, smoke_data_root):
    layout = RunLayout(str(tmp_path / "layout"))
    os.makedirs(layout.run_dir)
    with open(layout.marker, "w") as handle:
        json.dump({"format": RUN_FORMAT - 1}, handle)
    with pytest.raises(ConfigError, match=r"incompatible s4al-ray .*use another name="):
        Experiment(_cfg(str(tmp_path), smoke_data_root), log=lambda line: None).preflight()


def test_a_second_driver_on_the_same_experiment_is_refused(tmp_path):
    from s4al_ray.run_lock import hold_run_lock

    layout = RunLayout(str(tmp_path / "exp"))
    with hold_run_lock(layout, "exp"):
        with pytest.raises(
            ConfigError,
            match=r"another driver is running experiment 'exp' "
            r"\(pid \d+ on .*\); wait for it to finish, or .*name=",
        ):
            with hold_run_lock(layout, "exp"):
                pass
    with hold_run_lock(layout, "exp"):  # released with its holder: the resume takes it
        pass


def test_a_second_driver_on_an_s3_experiment_is_refused(ray_session):
    from s4al_ray.run_lock import hold_run_lock

    layout = RunLayout("s3://bucket/runs/exp")
    with hold_run_lock(layout, "s3-exp"):
        with pytest.raises(ConfigError, match="another driver is running experiment 's3-exp'"):
            with hold_run_lock(layout, "s3-exp"):
                pass
    with hold_run_lock(layout, "s3-exp"):
        pass


def test_the_writable_check_leaves_no_trace_but_keeps_what_others_wrote(tmp_path, monkeypatch):
    """Two sweep trials start at once under a new trials/: one's check must not delete the
    directory the other has just written into (it once removed it with rmtree)."""
    from s4al_ray import storage

    storage.check_writable(str(tmp_path / "trials" / "a"))
    assert not (tmp_path / "trials").exists()  # nothing of the check is left

    real_read = storage.read_bytes

    def read_while_another_trial_writes(uri: str) -> bytes:
        storage.write_text(str(tmp_path / "trials" / "b" / "config.yaml"), "x")
        return real_read(uri)

    monkeypatch.setattr(storage, "read_bytes", read_while_another_trial_writes)
    storage.check_writable(str(tmp_path / "trials" / "a"))
    assert (tmp_path / "trials" / "b" / "config.yaml").read_text() == "x"
    assert not (tmp_path / "trials" / "a").exists()


def test_a_run_saved_before_a_new_option_resumes_unless_the_option_is_changed(
    tmp_path, smoke_data_root
):
    """A run directory written before a key existed (its config.yaml lacks it) resumes when the
    key is at its default, and is refused by name when it is not."""
    import yaml

    from s4al_ray.resume import check_resumable

    experiment = Experiment(_cfg(str(tmp_path), smoke_data_root), log=lambda line: None)
    experiment.preflight()
    layout = experiment.layout
    with open(layout.config) as handle:
        saved = yaml.safe_load(handle)
    del saved["acquisition"]["diversity_shortlist"]  # as an older s4al-ray wrote it
    with open(layout.config, "w") as handle:
        yaml.safe_dump(saved, handle)
    check_resumable(layout, _cfg(str(tmp_path), smoke_data_root))
    changed = _cfg(str(tmp_path), smoke_data_root, "acquisition.diversity_shortlist=2")
    with pytest.raises(ConfigError, match=r"acquisition.diversity_shortlist: 3.0 -> 2"):
        check_resumable(layout, changed)
