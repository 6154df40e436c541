"""Connecting to Ray and sizing the work to what the cluster has."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass

import ray

from s4al_ray import storage
from s4al_ray.config import ConfigError, ExperimentConfig, location_settings
from s4al_ray.storage import StorageError


@dataclass
class ClusterResources:
    cpus: int
    gpus: int
    nodes: int = 1  # alive Ray nodes
    # What the cluster can grow to: the autoscaler's node types x their max counts when an
    # autoscaler reports its config, else what is there now (0 = the same as cpus / gpus).
    max_cpus: int = 0
    max_gpus: int = 0

    def __post_init__(self) -> None:
        self.max_cpus = max(self.max_cpus, self.cpus)
        self.max_gpus = max(self.max_gpus, self.gpus)


# Worker settings measured in BENCHMARKS.md (# Performance). A value in the driver's environment
# wins; an empty one leaves the library's own default.
WORKER_ENV_DEFAULTS = {
    # OMP_WAIT_POLICY is left to OpenMP (spin briefly, then sleep): Ray reserves a worker's CPUs
    # and the worker runs as many threads, so a short spin finds its peers running; the student's
    # step is 1.6x faster than with PASSIVE on quiet cores (benchmarks/wait_policy.py). On cores
    # shared with work Ray does not count, OMP_WAIT_POLICY=PASSIVE in the driver's environment
    # reaches every worker and is the faster choice there.
    "OMP_WAIT_POLICY": "",
    # Ray Train's controller polls its workers every 2 s: each fit() sat ~3 s after the last step.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


def _runtime_env() -> dict:
    """Environment every worker must share: S3 endpoint/region (never credentials, which come
    from each node's own AWS sources), the quiet logging settings and WORKER_ENV_DEFAULTS."""
    names = (storage.ENDPOINT_ENV, "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")
    env = {name: os.environ[name] for name in names if os.environ.get(name)}
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    for name, default in WORKER_ENV_DEFAULTS.items():
        value = os.environ.get(name, default)
        if value:
            env[name] = value
    return {"env_vars": env}


def connect(
    cfg: ExperimentConfig,
    address: str | None = None,
    custom_resources: dict[str, float] | None = None,
) -> ClusterResources:
    """Join ``address`` / ``cfg.ray.address`` / ``RAY_ADDRESS``, else start a new local Ray.

    Never joins a cluster nobody asked for: a Ray already running on this machine (or its stale
    address file) is used only with ``--address auto`` or an address.

    ``custom_resources`` are given to a local Ray only (a joined cluster's nodes declare theirs
    with ``ray start --resources``); sweeps use one to schedule trials without taking a CPU.
    """
    global _DASHBOARD_URL
    storage.configure_endpoint(cfg.s3_endpoint)
    if ray.is_initialized():
        return resources()
    target = target_address(cfg, address)
    kwargs: dict = {
        "runtime_env": _runtime_env(),
        "logging_level": logging.WARNING,
        "log_to_driver": cfg.ray.worker_logs,
        "configure_logging": True,
    }
    if target:
        try:
            context = ray.init(address=target, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ConfigError(
                f"cannot join the Ray cluster at {target!r} ({str(err).strip()[:200]}); start "
                "it (ray start --head), or drop --address / RAY_ADDRESS / ray.address to run "
                "on a new local Ray"
            ) from None
    else:
        # Ray starts workers at nice 15, so on a shared machine they starve behind every ordinary
        # process (the driver included). RAY_worker_niceness in the environment wins.
        system = {} if os.environ.get("RAY_worker_niceness") else {"worker_niceness": 0}
        kept_alive = 2 * (cfg.ray.num_cpus or os.cpu_count() or 1) + 4
        if not os.environ.get("RAY_num_workers_soft_limit"):
            # Ray kills idle workers beyond one per CPU, and Ray Train's actors (controller,
            # cleaner, dataset manager, workers) count: without headroom the teacher's task
            # workers, which keep torch and the model loaded, died during every fit and each
            # round's teacher pass paid ~10 s of imports again.
            system["num_workers_soft_limit"] = kept_alive
        if not os.environ.get("RAY_worker_maximum_startup_concurrency"):
            # The raylet lets one worker process start per CPU at a time and warns ("N PYTHON
            # worker processes have been started ... Nx the maximum expected startup
            # concurrency") once 4x that are up: a sweep's trials (trial actor, Train controller
            # and workers, pool actor, teacher tasks) reach it on every run, with nothing for
            # the user to do. Allowing as many starts at once as workers kept alive removes the
            # warning at its source; the sweep's wall time was unchanged (1:55 vs 2:01 here).
            system["worker_maximum_startup_concurrency"] = kept_alive
        _hide_default_token_notice()
        context = ray.init(
            address="local",
            num_cpus=cfg.ray.num_cpus or None,
            object_store_memory=cfg.ray.object_store_mb * 1024 * 1024,
            include_dashboard=cfg.ray.dashboard,
            resources=custom_resources or None,
            _system_config=system or None,
            **kwargs,
        )
    url = getattr(context, "dashboard_url", None)
    _DASHBOARD_URL = (url if url.startswith("http") else f"http://{url}") if url else None
    _quiet_ray_data()
    return resources()


_DASHBOARD_URL: str | None = None

# Ray 2.60 logs this at WARNING whenever ray.init starts a local cluster with its (secure) default
# of token authentication: nothing to act on, and it was the first line every `python run.py`
# printed. Only this notice is hidden; the warning that auth is *disabled* still shows.
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
DEFAULT_TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


class _DropDefaultTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(DEFAULT_TOKEN_NOTICE)


def _hide_default_token_notice() -> None:
    log = logging.getLogger(TOKEN_AUTH_LOGGER)
    if not any(isinstance(f, _DropDefaultTokenNotice) for f in log.filters):
        log.addFilter(_DropDefaultTokenNotice())


def _quiet_ray_data() -> None:
    """Our own progress lines say what each stage does; Ray's INFO chatter would bury them."""
    for name in ("ray", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # ray.data warns that progress bars are off every time a dataset executes.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def resources() -> ClusterResources:
    """The connected cluster as it is now, and the most it can grow to. Read again before each
    stage: an autoscaler adds and removes nodes while an experiment runs."""
    total = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    most = _autoscaler_max_resources() or {}
    return ClusterResources(
        cpus=int(total.get("CPU", 0)),
        gpus=int(total.get("GPU", 0)),
        nodes=max(1, nodes),
        max_cpus=int(min(most.get("CPU", 0), 1 << 20)),
        max_gpus=int(min(most.get("GPU", 0), 1 << 20)),
    )


def _autoscaler_max_resources() -> dict | None:
    """The cluster's largest size as its autoscaler reports it to the GCS (node types x max
    counts, capped by the config's max resources), or None without an autoscaler. Ray Train's
    worker group and Ray Data's shuffle read the same record; Ray has no public API for it yet."""
    try:
        from ray._private.state import state

        return state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001  (an older GCS, or a private API that moved)
        return None


def dashboard_url() -> str | None:
    """The Ray dashboard's URL when this driver started or joined a cluster that has one."""
    return _DASHBOARD_URL


@dataclass(frozen=True)
class TeacherWorkers:
    smallest: int  # the actor pool's size at start (tasks: = largest)
    largest: int  # what it may grow to while the autoscaler adds nodes


def teacher_workers(cfg: ExperimentConfig, res: ClusterResources) -> TeacherWorkers:
    """Teacher workers for a pass on the cluster as it is now (``res``, read before the pass).

    GPU actors: from the GPUs there now up to the most the cluster can grow to
    (``teacher.min_actors`` / ``teacher.num_actors`` when set). CPU tasks: one per CPU slot of the
    largest cluster; tasks beyond what is there now wait in Ray's queue, which is what asks an
    autoscaler for nodes."""
    t = cfg.teacher
    if cfg.train.use_gpu:
        largest = t.num_actors or max(1, res.max_gpus)
        smallest = t.min_actors or (largest if t.num_actors else max(1, res.gpus))
    else:
        largest = t.num_actors or max(1, res.max_cpus // t.cpus_per_actor)
        smallest = largest
    return TeacherWorkers(min(smallest, largest), largest)


def target_address(cfg: ExperimentConfig, address: str | None = None) -> str | None:
    """The cluster to join, when one was asked for (``--address``, ``ray.address``,
    ``RAY_ADDRESS``); None = a new local Ray."""
    return address or cfg.ray.address or os.environ.get("RAY_ADDRESS") or None


def planned_resources(cfg: ExperimentConfig, address: str | None = None) -> ClusterResources:
    """What a run would get, without starting Ray when it would start its own (dry runs): the
    joined cluster's resources, else this machine's CPUs (``ray.num_cpus``) and GPUs."""
    if target_address(cfg, address):
        return connect(cfg, address)
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # The CPUs this process may use (affinity, as a container limits it), as Ray would count.
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return ClusterResources(cpus=cfg.ray.num_cpus or usable or 1, gpus=gpus)


def check_fits(cfg: ExperimentConfig, res: ClusterResources) -> None:
    """Fail before training when the trainer could never be scheduled (it would hang)."""
    train = cfg.train
    if cfg.ray.autoscale:
        return
    # An elastic trainer starts with its smallest group (train.num_workers).
    need_cpus = train.num_workers * train.cpus_per_worker
    if need_cpus > res.cpus:
        raise ConfigError(
            f"train.num_workers={train.num_workers} x train.cpus_per_worker={train.cpus_per_worker}"
            f" needs {need_cpus} CPUs but the Ray cluster has {res.cpus}; lower them, e.g. "
            f"train.num_workers={max(1, res.cpus // train.cpus_per_worker)}"
        )
    if train.use_gpu and train.num_workers > res.gpus:
        raise ConfigError(
            f"train.use_gpu with {train.num_workers} workers needs {train.num_workers} GPUs; "
            f"the cluster has {res.gpus}"
        )


def check_cluster_paths(cfg: ExperimentConfig, res: ClusterResources) -> None:
    """On a cluster of more than one node (or one that may grow), refuse the paths other nodes
    cannot open before any work: train workers and teacher tasks on other nodes read the data
    and the prepared cache and write checkpoints, so each must be on S3 or on a filesystem
    every node mounts at the same path (``storage_shared: true``)."""
    if (res.nodes <= 1 and not cfg.ray.autoscale) or cfg.storage_shared:
        return
    shape = f"{res.nodes} nodes" if res.nodes > 1 else "an autoscaling cluster (ray.autoscale)"
    for key, value in location_settings(cfg):
        if not storage.is_s3(value):
            raise ConfigError(
                f"{key}: {value!r} is a path on this node, and the Ray cluster has {shape}: the "
                f"others cannot read or write it. Put it on S3 ({key}=s3://<bucket>/<prefix>), "
                "or, when every node mounts it at the same path (NFS, EFS), say so with "
                "storage_shared=true"
            )


def storage_failure(err: BaseException) -> StorageError | None:
    """The StorageError a worker raised somewhere inside ``err`` (Ray Train's worker-group
    error, a Ray task error, their causes), as a plain StorageError; None if there is none."""
    stack: list = [err]
    seen: set[int] = set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)  # RayTaskError: the worker's own exception
        if isinstance(e, StorageError):
            if isinstance(cause, StorageError):
                e = cause
            return StorageError(str(e.args[0]) if e.args else str(e))
        stack += [cause, e.__cause__, e.__context__, getattr(e, "controller_failure", None)]
        stack += list(getattr(e, "worker_failures", {}).values())
    # Ray Data wraps a task's error in UserCodeException, and the chain to our error does not
    # survive pickling: only the worker's traceback text, carried in the message, names it.
    found = _STORAGE_ERROR_LINE.search(str(err))
    return StorageError(found.group(1).strip()) if found else None


_STORAGE_ERROR_LINE = re.compile(r"s4al_ray\.storage\.StorageError: ([^\n]+)")


@contextlib.contextmanager
def worker_storage_errors():
    """Raise a worker's StorageError (a node that cannot reach S3) in the driver as itself, so
    the CLI prints its message, naming the node and the fix, instead of a Ray traceback."""
    try:
        yield
    except StorageError:
        raise
    except Exception as err:  # noqa: BLE001  (anything Ray wraps a worker's error in)
        found = storage_failure(err)
        if found is None:
            raise
        raise found from None
