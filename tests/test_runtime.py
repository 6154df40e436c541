"""Local Ray start-up output: what a user sees first."""

from __future__ import annotations

import logging

import pytest
from ray._private.authentication import authentication_token_setup as ray_auth

from s4al_ray import runtime
from s4al_ray.config import load_config


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_default_token_notice_hidden_but_disabled_auth_still_warns():
    # Ray's own warning functions: the test breaks, as it should, if Ray renames the logger or
    # rewords the notice the filter matches.
    assert ray_auth.logger.name == runtime.TOKEN_AUTH_LOGGER
    collect = _Collect()
    ray_auth.logger.addHandler(collect)
    try:
        runtime._hide_default_token_notice()
        runtime._hide_default_token_notice()  # idempotent: one filter, not one per connect
        ray_auth._warn_token_auth_enabled()
        ray_auth._warn_token_auth_disabled()
    finally:
        ray_auth.logger.removeHandler(collect)
    assert sum(isinstance(f, runtime._DropDefaultTokenNotice) for f in ray_auth.logger.filters) == 1
    assert not any(m.startswith(runtime.DEFAULT_TOKEN_NOTICE) for m in collect.messages)
    assert any("Token authentication is disabled" in m for m in collect.messages)


_CONNECT = """
import ray
from s4al_ray.config import load_config
from s4al_ray.runtime import connect
connect(load_config(None, ["ray.num_cpus=1", "ray.object_store_mb=96"]), {address!r})
print("GCS", ray.get_runtime_context().gcs_address)
ray.shutdown()
"""


def _connect_in_subprocess(address):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c", _CONNECT.format(address=address)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("GCS"))


def test_never_joins_a_cluster_nobody_asked_for(ray_session):
    """With a Ray already running here (as after the cluster README's ``ray start --head``, or
    this test session's own), a plain run starts its own local Ray instead of joining it with
    local-only arguments (which Ray refuses); ``--address auto`` joins it."""
    running = ray_session.get_runtime_context().gcs_address
    assert _connect_in_subprocess(None) != running
    assert _connect_in_subprocess("auto") == running


# -- sizing the stages for a cluster that grows


def _sized(*overrides: str):
    return load_config(None, ["data.root=/tmp/x", *overrides])


def test_cpu_teacher_has_one_task_per_slot_of_the_largest_cluster():
    from s4al_ray.runtime import ClusterResources, teacher_workers

    cfg = _sized("teacher.cpus_per_actor=2")
    now = ClusterResources(cpus=8, gpus=0)
    assert teacher_workers(cfg, now) == runtime.TeacherWorkers(4, 4)
    grown = ClusterResources(cpus=8, gpus=0, nodes=2, max_cpus=32)
    assert teacher_workers(cfg, grown) == runtime.TeacherWorkers(16, 16)
    assert teacher_workers(_sized("teacher.num_actors=3"), grown) == runtime.TeacherWorkers(3, 3)


def test_gpu_teacher_pool_starts_with_the_gpus_present_and_grows_to_the_autoscaler_max():
    from s4al_ray.runtime import ClusterResources, teacher_workers

    res = ClusterResources(cpus=8, gpus=1, max_gpus=8)
    assert teacher_workers(_sized("train.use_gpu=true"), res) == runtime.TeacherWorkers(1, 8)
    # No GPU node yet (an autoscaling cluster starts with none): one actor, which asks for one.
    empty = ClusterResources(cpus=4, gpus=0, max_gpus=4)
    assert teacher_workers(_sized("train.use_gpu=true"), empty) == runtime.TeacherWorkers(1, 4)
    # Set in the config, the sizes win; a fixed num_actors without min_actors is a fixed pool.
    fixed = _sized("train.use_gpu=true", "teacher.num_actors=6")
    assert teacher_workers(fixed, res) == runtime.TeacherWorkers(6, 6)
    both = _sized("train.use_gpu=true", "teacher.num_actors=6", "teacher.min_actors=2")
    assert teacher_workers(both, res) == runtime.TeacherWorkers(2, 6)


def test_cluster_resources_never_report_a_max_below_what_is_there():
    from s4al_ray.runtime import ClusterResources

    res = ClusterResources(cpus=8, gpus=2, max_cpus=4)
    assert (res.max_cpus, res.max_gpus) == (8, 2)


def test_the_connected_clusters_max_is_its_current_size_without_an_autoscaler(ray_session):
    res = runtime.resources()
    assert res.cpus >= 1 and (res.max_cpus, res.max_gpus) == (res.cpus, res.gpus)


def test_elastic_training_settings_are_validated():
    from s4al_ray.config import ConfigError
    from s4al_ray.student_trainer import _scaling

    cfg = _sized("train.num_workers=2", "train.max_workers=4", "train.elastic_check_s=5")
    scaling = _scaling(cfg.train)
    assert scaling.num_workers == (2, 4) and scaling.elastic_resize_monitor_interval_s == 5
    assert _scaling(_sized("train.num_workers=2").train).num_workers == 2
    with pytest.raises(ConfigError, match=r"train.max_workers \(1\) is below train.num_workers"):
        _sized("train.num_workers=2", "train.max_workers=1")
    with pytest.raises(ConfigError, match=r"teacher.min_actors \(3\) exceeds teacher.num_actors"):
        _sized("teacher.num_actors=2", "teacher.min_actors=3")
