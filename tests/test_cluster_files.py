"""The cluster deployment files: cluster/aws.yaml (Ray cluster launcher) and cluster/kuberay.yaml
(KubeRay RayJob). Pure file checks, no cloud and no Ray cluster: well under a second."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent
AWS_YAML = ROOT / "cluster" / "aws.yaml"
KUBERAY_YAML = ROOT / "cluster" / "kuberay.yaml"
PACKAGE_NAMES = {"s4al-ray", "s4al_ray"}


def _ray_version() -> str:
    from importlib.metadata import version

    return version("ray")


def _major_minor(v: str) -> str:
    return ".".join(v.split(".")[:2])


@pytest.fixture(scope="module")
def aws() -> dict:
    return yaml.safe_load(AWS_YAML.read_text())


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return yaml.safe_load(KUBERAY_YAML.read_text())


# -- cluster/aws.yaml


def test_aws_yaml_matches_rays_own_schema(aws):
    import jsonschema
    import ray

    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(aws, schema)


def test_aws_yaml_core_keys(aws):
    for key in (
        "cluster_name",
        "max_workers",
        "docker",
        "provider",
        "auth",
        "available_node_types",
        "head_node_type",
        "file_mounts",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
        "idle_timeout_minutes",
    ):
        assert key in aws, key
    assert aws["provider"]["type"] == "aws"
    assert aws["provider"]["region"]
    assert "cache_stopped_nodes" in aws["provider"]
    assert aws["auth"]["ssh_user"] == "ubuntu"
    assert aws["head_node_type"] in aws["available_node_types"]
    head = aws["available_node_types"][aws["head_node_type"]]
    assert head.get("min_workers", 0) == 0 and head.get("max_workers", 0) == 0
    assert "GPU" not in head["resources"]


def _gpu_worker_types(aws) -> dict:
    return {
        name: spec
        for name, spec in aws["available_node_types"].items()
        if name != aws["head_node_type"] and spec["resources"].get("GPU", 0) >= 1
    }


def test_aws_gpu_workers_autoscale(aws):
    gpu_types = _gpu_worker_types(aws)
    assert gpu_types, "no worker type offers a GPU"
    for name, spec in gpu_types.items():
        assert spec.get("min_workers", 0) < spec["max_workers"], name
        assert spec["max_workers"] <= aws["max_workers"], name
    spot = [
        n
        for n, s in gpu_types.items()
        if s["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    ]
    on_demand = [n for n in gpu_types if n not in spot]
    assert spot and on_demand, "expected one spot and one on-demand GPU worker type"


def test_aws_docker_image_pinned_to_installed_ray(aws):
    image = aws["docker"]["image"]
    repo, _, tag = image.partition(":")
    assert repo == "rayproject/ray", image
    assert tag and tag not in ("latest", "nightly"), image
    assert tag.startswith(_major_minor(_ray_version()) + "."), (image, _ray_version())
    assert "gpu" in tag
    assert aws["docker"].get("container_name")
    assert any("--shm-size" in opt for opt in aws["docker"]["run_options"])


def test_aws_setup_installs_this_package(aws):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] in PACKAGE_NAMES

    mounted = {
        remote: local
        for remote, local in aws["file_mounts"].items()
        if (ROOT / os.path.expanduser(local) / "pyproject.toml").resolve()
        == (ROOT / "pyproject.toml").resolve()
    }
    assert mounted, "file_mounts does not sync the project directory"
    installs = [cmd for cmd in aws["setup_commands"] if "pip install" in cmd]
    assert installs
    targets = set()
    for cmd in installs:
        args = shlex.split(cmd)
        for i, arg in enumerate(args):
            if arg in ("-e", "--editable") and i + 1 < len(args):
                targets.add(args[i + 1])
    assert targets & set(mounted), (targets, mounted)
    # Ray itself stays at the image's version.
    assert any(f"=={_ray_version()}" in cmd for cmd in installs)


def test_aws_start_commands(aws):
    head = " ".join(aws["head_start_ray_commands"])
    assert "ray stop" in head
    assert "--head" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "--dashboard-host=0.0.0.0" in head
    worker = " ".join(aws["worker_start_ray_commands"])
    assert "ray stop" in worker and "--address=$RAY_HEAD_IP:6379" in worker


def test_aws_token_auth_is_consistent(aws):
    """Token mode on every node, and the token file it points to is actually mounted."""
    opts = " ".join(aws["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in opts
    match = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", opts)
    assert match
    token_path = match.group(1)
    remote_paths = {p.replace("~", "/home/ray", 1) for p in aws["file_mounts"]}
    assert token_path in remote_paths


# -- cluster/kuberay.yaml


def _containers(pod_template: dict) -> list[dict]:
    containers = pod_template["spec"]["containers"]
    assert containers and all(c.get("image") and c.get("name") for c in containers)
    return containers


def test_kuberay_rayjob_required_fields(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    assert rayjob["metadata"]["name"]
    spec = rayjob["spec"]
    assert spec["entrypoint"].strip()
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int)
    yaml.safe_load(spec.get("runtimeEnvYAML", "{}"))  # must itself be valid YAML

    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == _ray_version()
    assert cluster["enableInTreeAutoscaling"] is True
    assert "autoscalerOptions" in cluster

    head = cluster["headGroupSpec"]
    params = head["rayStartParams"]
    assert params["dashboard-host"] == "0.0.0.0"
    assert params["num-cpus"] == "0"
    assert all(isinstance(v, str) for v in params.values()), "rayStartParams values are strings"
    _containers(head["template"])

    groups = cluster["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert group["groupName"]
        assert 0 == group["minReplicas"] < group["maxReplicas"]
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        assert "rayStartParams" in group
        gpus = [
            c["resources"]["limits"].get("nvidia.com/gpu") for c in _containers(group["template"])
        ]
        assert any(int(g or 0) >= 1 for g in gpus), group["groupName"]


def test_kuberay_images_match_ray_version(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    for template in templates:
        for container in _containers(template):
            image = container["image"]
            assert not image.endswith(":latest") and ":" in image, image
            assert _ray_version() in image.rsplit(":", 1)[1], image


def test_kuberay_entrypoint_config_exists_or_is_cityscapes(rayjob):
    args = shlex.split(rayjob["spec"]["entrypoint"])
    assert args[:2] == ["python", "run.py"]
    config = args[args.index("--config") + 1]
    # configs/cityscapes.yaml is being written alongside this file; anything else must exist.
    assert config == "configs/cityscapes.yaml" or (ROOT / config).is_file(), config
    assert any(a.startswith("storage=s3://") for a in args)


def _envs(rayjob) -> list[dict]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    return [env for t in templates for c in _containers(t) for env in c.get("env", [])]


def test_kuberay_s3_settings_come_from_a_secret(rayjob):
    envs = {e["name"]: e for e in _envs(rayjob)}
    for name in ("AWS_REGION", "S4AL_S3_ENDPOINT"):
        assert name in envs, name
    for env in envs.values():
        if re.search(r"SECRET|ACCESS_KEY|TOKEN|PASSWORD|ENDPOINT|REGION", env["name"]):
            assert "value" not in env, env["name"]
            assert "secretKeyRef" in env["valueFrom"], env["name"]


# -- both files


@pytest.mark.parametrize("path", [AWS_YAML, KUBERAY_YAML], ids=lambda p: p.name)
def test_no_literal_aws_credentials(path):
    text = path.read_text()
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "AWS access key id in file"
    assert not re.search(r"(?im)aws_secret_access_key\s*[:=]\s*['\"]?(?!\s*$)[^\s'\"#]+", text), (
        "literal aws_secret_access_key value"
    )
    assert not re.search(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])", text), (
        "40-character secret-key-like string"
    )
    for doc in [yaml.safe_load(text)]:
        _assert_no_literal_secret_env(doc)


def _assert_no_literal_secret_env(node) -> None:
    if isinstance(node, dict):
        if (
            isinstance(node.get("name"), str)
            and "value" in node
            and re.search(r"SECRET|ACCESS_KEY|SESSION_TOKEN|AUTH_TOKEN$|PASSWORD", node["name"])
        ):
            raise AssertionError(f"literal value for {node['name']}")
        for value in node.values():
            _assert_no_literal_secret_env(value)
    elif isinstance(node, list):
        for value in node:
            _assert_no_literal_secret_env(value)
