"""Local Ray start-up output: what a user sees first."""

from __future__ import annotations

import logging

from ray._private.authentication import authentication_token_setup as ray_auth

from s4al_ray import runtime


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
