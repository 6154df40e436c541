"""One driver per experiment: a second ``python run.py`` on the same run directory is refused.

Two drivers on one experiment would train the same round twice and race their commits. The lock
dies with its holder, so a crashed driver never blocks the rerun that resumes it:

- a local run directory: an ``flock`` on ``<run_dir>/.driver.lock`` (released by the kernel when
  the process ends; the file records who holds it, for the message);
- an ``s3://`` run directory: a named Ray actor owned by the driver (Ray removes it, and frees
  its name, when the driver exits), so drivers on one cluster see each other.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Iterator

from s4al_ray import storage
from s4al_ray.config import ConfigError
from s4al_ray.layout import RunLayout

NAMESPACE = "s4al_ray"


def _refusal(name: str, holder: str) -> ConfigError:
    return ConfigError(
        f"another driver is running experiment '{name}' ({holder}); wait for it to finish, or "
        "start a separate experiment with name=<new name>"
    )


@contextlib.contextmanager
def _local_lock(layout: RunLayout, name: str) -> Iterator[None]:
    import fcntl

    storage.makedirs(layout.run_dir)
    path = layout.path(".driver.lock")
    handle = open(path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise _refusal(name, handle.read().strip() or "pid unknown") from None
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the flock


class _Holder:
    def __init__(self, holder: str) -> None:
        self.holder = holder

    def who(self) -> str:
        return self.holder


@contextlib.contextmanager
def _cluster_lock(name: str) -> Iterator[None]:
    import ray

    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    actor_name = f"driver-{name}"
    try:
        actor = (
            ray.remote(num_cpus=0)(_Holder)
            .options(name=actor_name, namespace=NAMESPACE)
            .remote(holder)
        )
        ray.get(actor.who.remote())
    except ValueError:  # the name is taken: another live driver holds it
        other = ray.get_actor(actor_name, namespace=NAMESPACE)
        raise _refusal(name, ray.get(other.who.remote())) from None
    try:
        yield
    finally:
        ray.kill(actor)


def hold_run_lock(layout: RunLayout, name: str):
    """Hold the experiment's driver lock for the ``with`` block (raises ConfigError if taken)."""
    if storage.is_s3(layout.run_dir):
        return _cluster_lock(name)
    return _local_lock(layout, name)
