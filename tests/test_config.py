"""Config loading: overrides, validation errors that name the key, the saved resolved config."""

from __future__ import annotations

import pytest
import yaml

from s4al_ray.config import ConfigError, from_dict, load_config, to_yaml


def test_defaults_and_dotted_overrides():
    cfg = load_config(
        "configs/default.yaml",
        ["train.epochs=5", "teacher.scales=[0.5, 1.0]", "acquisition.function=margin"],
    )
    assert cfg.train.epochs == 5
    assert cfg.teacher.scales == [0.5, 1.0]
    assert cfg.acquisition.function == "margin"
    assert cfg.model.backbone == "mobilenet_v2"


def test_int_accepted_for_float():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epoch=3", "did you mean 'epochs'"),
        ("trian.epochs=3", "did you mean 'train'"),
        ("train.epochs=three", "train.epochs: expected int"),
        ("train.epochs=1.5", "train.epochs: expected int"),
        ("train.use_gpu=1", "train.use_gpu: expected bool"),
        ("train.epochs=0", "train.epochs: 0 is below the minimum 1"),
        ("acquisition.round_budget=-0.1", "acquisition.round_budget: -0.1 is below the minimum"),
        ("acquisition.total_budget=1.5", "acquisition.total_budget: 1.5 is above the maximum 1.0"),
        ("teacher.threshold=1.2", "teacher.threshold"),
        ("model.backbone=vgg", "model.backbone: 'vgg' is not one of: mobilenet_v2"),
        ("model.output_stride=32", "model.output_stride: 32 is not one of: 8, 16"),
        ("acquisition.region_size=500", "acquisition.region_size (500) is larger than the image"),
        ("acquisition.round_budget=0.5", "exceeds acquisition.total_budget"),
        ("train", "expected key.path=value"),
        ("train=3", "train: expected a mapping"),
    ],
)
def test_errors_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config("configs/default.yaml", [override])
    assert fragment in str(err.value)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"train.epochz.*did you mean 'epochs'.*bad.yaml"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(broken))


def test_resolved_config_round_trips():
    cfg = load_config("configs/default.yaml", ["seed=7"])
    again = from_dict(yaml.safe_load(to_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize("path", ["configs/default.yaml", "configs/smoke.yaml"])
def test_shipped_configs_load(path):
    load_config(path)
