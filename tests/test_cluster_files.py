"""The cluster deployment files: cluster/Dockerfile + cluster/constraints.txt (the one project
image), cluster/aws.yaml (Ray cluster launcher), cluster/kuberay.yaml (KubeRay RayJob) and
cluster/kuberay-serviceaccount.yaml (its IRSA ServiceAccount). Pure file checks, no cloud, no
Docker and no Ray cluster: about a second."""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
AWS_YAML = CLUSTER / "aws.yaml"
KUBERAY_YAML = CLUSTER / "kuberay.yaml"
SERVICE_ACCOUNT_YAML = CLUSTER / "kuberay-serviceaccount.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
CONSTRAINTS = CLUSTER / "constraints.txt"
DOCKERIGNORE = ROOT / ".dockerignore"
PACKAGE_NAMES = {"s4al-ray", "s4al_ray"}
CREDENTIAL_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
AMI_ID = re.compile(r"ami-(?:[0-9a-f]{8}|[0-9a-f]{17})")


def _ray_version() -> str:
    from importlib.metadata import version

    return version("ray")


def _major_minor(v: str) -> str:
    return ".".join(v.split(".")[:2])


def _trial_resource() -> str:
    """s4al_ray.sweep.TRIAL_RESOURCE, read from the source (importing it would start Tune)."""
    tree = ast.parse((ROOT / "s4al_ray" / "sweep.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "TRIAL_RESOURCE" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError("s4al_ray/sweep.py defines no TRIAL_RESOURCE")


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


@pytest.fixture(scope="module")
def aws() -> dict:
    return yaml.safe_load(AWS_YAML.read_text())


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return yaml.safe_load(KUBERAY_YAML.read_text())


@pytest.fixture(scope="module")
def service_account() -> dict:
    return yaml.safe_load(SERVICE_ACCOUNT_YAML.read_text())


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    """cluster/constraints.txt as canonical name -> version; every line must be name==version."""
    pinned: dict[str, str] = {}
    for number, raw in enumerate(CONSTRAINTS.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert match, f"constraints.txt:{number}: not an exact pin: {raw!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pinned, f"constraints.txt:{number}: {name} pinned twice"
        Version(match.group(2))  # a valid version
        pinned[name] = match.group(2)
    return pinned


def _project_image(aws) -> str:
    return aws["docker"]["image"]


# -- cluster/constraints.txt and cluster/Dockerfile


def test_constraints_pin_every_runtime_dependency(pins):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"runtime dependency {req.name} is not pinned"
        assert req.specifier.contains(pins[name], prereleases=True), (spec, pins[name])
    # Neither the project itself nor its test-only / optional extras.
    assert not {canonicalize_name(n) for n in PACKAGE_NAMES} & set(pins)
    for extra, specs in project.get("optional-dependencies", {}).items():
        for spec in specs:
            assert canonicalize_name(Requirement(spec).name) not in pins, (extra, spec)


def test_constraints_match_tested_torch_and_installed_ray(pins):
    """The image gets the torch/torchvision that CI tests with, and the Ray this repo runs."""
    ci = (ROOT / ".ci" / "run").read_text()
    for name in ("torch", "torchvision"):
        tested = re.search(rf'"{name}==([^"]+)"', ci)
        assert tested, f".ci/run does not pin {name}"
        assert pins[name] == tested.group(1), (name, pins[name], tested.group(1))
    assert pins["ray"] == _ray_version()


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def test_dockerfile_base_image_is_the_pinned_ray(pins):
    froms = [args for instr, args in _dockerfile() if instr == "FROM"]
    assert len(froms) == 1, froms
    assert froms[0] == f"rayproject/ray:{pins['ray']}-py311-gpu", froms[0]


def test_dockerfile_installs_the_package_with_the_constraints():
    runs = [args for instr, args in _dockerfile() if instr == "RUN"]
    installs = [cmd for cmd in runs if re.search(r"\bpip install\b", cmd)]
    assert installs
    for cmd in installs:  # nothing is installed outside the pins
        assert re.search(r"(-c|-r|--constraint|--requirement)\s+cluster/constraints\.txt", cmd), cmd
    package = [
        cmd
        for cmd in installs
        for part in cmd.split("&&")
        if re.search(r"\bpip install\b", part)
        and "-c cluster/constraints.txt" in part
        and "." in shlex.split(part)
    ]
    assert package, "no `pip install -c cluster/constraints.txt .`"
    copies = " ".join(args for instr, args in _dockerfile() if instr == "COPY")
    assert "cluster/constraints.txt" in copies


def _docker_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pat = pattern[1:] if negated else pattern
        pat = pat.rstrip("/")
        if any(fnmatch.fnmatchcase(p, pat) for p in prefixes):
            ignored = not negated
    return ignored


def test_build_context_has_what_the_image_copies_and_nothing_heavy():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    sources = []
    for instr, args in _dockerfile():
        if instr == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            sources += words[:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert not _docker_ignored(src, patterns), f"COPY {src}: excluded by .dockerignore"
    for heavy in (".venv", "runs", "data_cache", "data/cityscapes", ".git"):
        assert _docker_ignored(heavy, patterns), f"{heavy} would be sent to the Docker build"


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


def test_aws_runs_the_project_image(aws):
    image = _project_image(aws)
    repo, _, tag = image.rpartition(":")
    assert repo.rsplit("/", 1)[-1] == "s4al-ray", image
    assert not repo.startswith("rayproject/"), "the bare Ray image has no torch or package"
    assert tag and tag not in ("latest", "nightly"), image
    assert f"ray{_ray_version()}" in tag and "gpu" in tag, (image, _ray_version())
    assert "head_image" not in aws["docker"] and "worker_image" not in aws["docker"]
    for spec in aws["available_node_types"].values():
        assert "image" not in spec.get("docker", {}), "a node type overrides the image"
    assert aws["docker"].get("container_name")
    assert any("--shm-size" in opt for opt in aws["docker"]["run_options"])


def _aws_commands(aws) -> list[str]:
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    cmds = [c for k in keys for c in aws.get(k) or []]
    for spec in aws["available_node_types"].values():
        for k in ("initialization_commands", "worker_setup_commands"):
            cmds += spec.get(k) or []
    return cmds


def test_aws_nodes_install_nothing_at_start(aws):
    """Everything is in the image: no pip/conda at node start, no project sync to install."""
    for cmd in _aws_commands(aws):
        assert not re.search(r"\b(pip3?|conda|uv pip|mamba)\s+install\b", cmd), cmd
        assert "torch" not in cmd, cmd
    for remote, local in aws["file_mounts"].items():
        path = (ROOT / Path(local).expanduser()).resolve()
        assert not (path.is_dir() and (path / "pyproject.toml").is_file()), (
            f"file_mounts syncs the project to {remote}"
        )


def test_aws_ami_pinned_and_the_same_on_every_node(aws):
    ids = {
        name: spec["node_config"]["ImageId"] for name, spec in aws["available_node_types"].items()
    }
    assert len(set(ids.values())) == 1, f"node types boot different AMIs: {ids}"
    (ami,) = set(ids.values())
    assert AMI_ID.fullmatch(ami), f"not a pinned AMI id: {ami!r}"
    resolved = [s for s in _strings(aws) if s.startswith("resolve:")]
    assert not resolved, f"resolved at launch (needs ssm:GetParameters, may drift): {resolved}"


def test_every_aws_node_type_declares_the_trial_resource(aws):
    trial = _trial_resource()
    for name, spec in aws["available_node_types"].items():
        assert spec["resources"].get(trial, 0) >= 1, f"{name} does not declare {trial}"


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


def _groups(rayjob) -> list[tuple[dict, bool]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    return [(cluster["headGroupSpec"], True)] + [(g, False) for g in cluster["workerGroupSpecs"]]


def _all_containers(template: dict) -> list[dict]:
    spec = template["spec"]
    return list(spec.get("initContainers", [])) + _containers(template)


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
    for group, _ in _groups(rayjob):
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), "rayStartParams values are strings"


def test_kuberay_token_auth(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster.get("authOptions", {}).get("mode") == "token", "job API without auth"
    # authOptions needs Ray >= 2.52 in the image.
    assert Version(cluster["rayVersion"]) >= Version("2.52.0")
    for group, _ in _groups(rayjob):
        for container in _all_containers(group["template"]):
            for env in container.get("env", []):
                if env["name"] == "RAY_AUTH_MODE":
                    assert env.get("value") == "token", "RAY_AUTH_MODE overridden"


def test_kuberay_uses_the_same_project_image_as_aws(rayjob, aws):
    images = {c["image"] for group, _ in _groups(rayjob) for c in _containers(group["template"])}
    assert images == {_project_image(aws)}, images
    for image in images:
        assert not image.endswith(":latest") and ":" in image, image
        assert _ray_version() in image.rsplit(":", 1)[1], image


def test_every_kuberay_group_declares_the_trial_resource(rayjob):
    """As the KubeRay autoscaler reads the group (its own parser, Ray 2.60)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _get_ray_resources_from_group_spec,
    )

    trial = _trial_resource()
    for group, is_head in _groups(rayjob):
        name = "head" if is_head else group["groupName"]
        resources = _get_ray_resources_from_group_spec(group, is_head)
        assert resources.get(trial) == 1, (name, resources)
        if not is_head:
            assert resources.get("GPU", 0) >= 1, (name, resources)


def test_kuberay_entrypoint_config_exists_or_is_cityscapes(rayjob):
    args = shlex.split(rayjob["spec"]["entrypoint"])
    assert args[:2] == ["python", "run.py"]
    config = args[args.index("--config") + 1]
    # configs/cityscapes.yaml is being written alongside this file; anything else must exist.
    assert config == "configs/cityscapes.yaml" or (ROOT / config).is_file(), config
    assert any(a.startswith("storage=s3://") for a in args)


def test_kuberay_s3_credentials_come_from_the_service_account_role(rayjob, service_account):
    assert service_account["apiVersion"] == "v1" and service_account["kind"] == "ServiceAccount"
    sa_meta = service_account["metadata"]
    assert sa_meta["namespace"] == rayjob["metadata"]["namespace"]
    role = sa_meta["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::[^:\s]+:role/[\w+=,.@/-]+", role), role
    for group, is_head in _groups(rayjob):
        name = "head" if is_head else group["groupName"]
        spec = group["template"]["spec"]
        assert spec.get("serviceAccountName") == sa_meta["name"], name
        assert spec.get("automountServiceAccountToken", True) is not False, name
        for container in _all_containers(group["template"]):
            names = {e["name"] for e in container.get("env", [])}
            assert not names & CREDENTIAL_ENV, (name, container["name"], names & CREDENTIAL_ENV)
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, (name, "envFrom a Secret", source)


def test_kuberay_s3_settings_come_from_references(rayjob):
    for group, _ in _groups(rayjob):
        for container in _containers(group["template"]):
            envs = {e["name"]: e for e in container.get("env", [])}
            for name in ("AWS_REGION", "S4AL_S3_ENDPOINT"):
                assert name in envs, (container["name"], name)
                assert "value" not in envs[name], name
                ref = envs[name]["valueFrom"]
                assert "configMapKeyRef" in ref or "secretKeyRef" in ref, name


# -- all files


@pytest.mark.parametrize(
    "path", [AWS_YAML, KUBERAY_YAML, SERVICE_ACCOUNT_YAML, DOCKERFILE], ids=lambda p: p.name
)
def test_no_literal_aws_credentials(path):
    text = path.read_text()
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "AWS access key id in file"
    assert not re.search(r"(?im)aws_secret_access_key\s*[:=]\s*['\"]?(?!\s*$)[^\s'\"#]+", text), (
        "literal aws_secret_access_key value"
    )
    assert not re.search(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])", text), (
        "40-character secret-key-like string"
    )
    if path.suffix == ".yaml":
        _assert_no_literal_secret_env(yaml.safe_load(text))
    else:
        assert not re.search(r"(?m)^\s*(ENV|ARG)\s+AWS_(SECRET|ACCESS|SESSION)", text)


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
