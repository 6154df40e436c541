"""A multi-node Ray cluster on this machine, for tests and benchmarks of the cluster path.

A head and worker nodes, each started by ``ray start`` as the cluster launcher and KubeRay start
them on cloud machines: own raylet, object store, ports and agents, on 127.0.0.1, in a temp dir
of its own (so stopping it never touches another Ray on this machine). The head has no CPUs, as
recommended for real clusters: it runs the job server and the job drivers, the work goes to
worker nodes. A node is lost the way a machine is lost: its raylet killed.

    cluster = LocalCluster(); cluster.add_worker(); cluster.add_worker()
    job_id, output = cluster.submit(["--config", "configs/smoke.yaml", ...])
    cluster.close()
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
JOB_TIMEOUT_S = 600


class ClusterCommandError(RuntimeError):
    """A ``ray`` command of the local cluster failed; the message holds its output."""


def pids_matching(marker: str) -> list[int]:
    """PIDs of processes whose command line contains ``marker``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry))
    return pids


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def kill_matching(marker: str) -> None:
    for pid in pids_matching(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class LocalCluster:
    """The head (``head_cpus``, 0 by default) now; worker nodes with :meth:`add_worker`."""

    def __init__(self, head_cpus: int = 0) -> None:
        self.temp = tempfile.mkdtemp(prefix="s4rt", dir="/tmp")  # Ray's socket paths are long
        # Jobs run with the cluster's environment: its `python` must be this interpreter.
        path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": path}
        self.env.pop("RAY_ADDRESS", None)
        self.workers: dict[str, int] = {}  # node id -> node manager port, per worker started
        self.next_worker_port = 21000
        gcs, dash, client, *self.head_ports = _free_ports(9)
        self.gcs, self.dashboard = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
        agent, agent_grpc, metrics, renv, node, objm = self.head_ports
        self._ray_start(
            "--head",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--ray-client-server-port={client}",
            f"--num-cpus={head_cpus}",
            *self._node_ports(agent, agent_grpc, metrics, renv, node, objm),
        )

    def _node_ports(self, agent, agent_grpc, metrics, renv, node, objm) -> list[str]:
        low = self.next_worker_port
        self.next_worker_port += 500  # worker processes of different nodes never share a port
        return [
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={renv}",
            f"--node-manager-port={node}",
            f"--object-manager-port={objm}",
            f"--min-worker-port={low}",
            f"--max-worker-port={low + 499}",
        ]

    def _ray_start(self, *args: str) -> None:
        command = [
            RAY,
            "start",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp}",
            "--object-store-memory=150000000",
            "--disable-usage-stats",
            *args,
        ]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise ClusterCommandError(done.stdout[-2000:] + done.stderr[-2000:])

    def add_worker(self, cpus: int = 1) -> str:
        """Start a worker node; returns its node id once the cluster sees it."""
        before = {n["node_id"] for n in self.nodes()}
        ports = _free_ports(6)
        self._ray_start(f"--address={self.gcs}", f"--num-cpus={cpus}", *self._node_ports(*ports))
        deadline = time.time() + 60
        while time.time() < deadline:
            new = [n["node_id"] for n in self.nodes() if n["node_id"] not in before]
            if new:
                self.workers[new[0]] = ports[4]
                return new[0]
            time.sleep(0.5)
        raise ClusterCommandError("the new worker node never joined")

    def kill_worker(self, node_id: str) -> None:
        """Lose a node as a machine is lost: its raylet (and with it its workers) killed."""
        kill_matching(f"--node_manager_port={self.workers.pop(node_id)}")

    def nodes(self, alive: bool = True) -> list[dict]:
        listed = self.cli("list", "nodes", "--format", "json", "--limit", "100")
        return [n for n in json.loads(listed) if n["state"] == "ALIVE" or not alive]

    def head_id(self) -> str:
        return next(n["node_id"] for n in self.nodes() if n["is_head_node"])

    def cli(self, *args: str) -> str:
        env = {**self.env, "RAY_ADDRESS": self.dashboard}
        done = subprocess.run(
            [RAY, *args], env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S
        )
        if done.returncode != 0:
            raise ClusterCommandError(f"ray {' '.join(args)}:\n{done.stdout[-3000:]}{done.stderr}")
        return done.stdout

    def submit(self, overrides: list[str], wait: bool = True) -> tuple[str, str]:
        """``ray job submit --working-dir <repo> -- python run.py ...``: (submission id, output)."""
        job_id = f"s4al-{uuid.uuid4().hex[:8]}"
        command = [
            RAY,
            "job",
            "submit",
            "--address",
            self.dashboard,
            "--submission-id",
            job_id,
            "--working-dir",
            REPO,
            *([] if wait else ["--no-wait"]),
            "--",
            "python",
            "run.py",
            *overrides,
        ]
        # From an empty directory: nothing can be read from where the user submits.
        cwd = tempfile.mkdtemp(prefix="submit-")
        done = subprocess.run(
            command, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S
        )
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise ClusterCommandError(output[-4000:])
        return job_id, output

    def status(self, job_id: str) -> str:
        out = self.cli("job", "status", job_id).lower()  # "Job '...' was stopped", ...
        for state in ("succeeded", "failed", "stopped", "running", "pending"):
            if state in out:
                return state.upper()
        return out

    def close(self) -> None:
        kill_matching(self.temp)
        time.sleep(1)
        shutil.rmtree(self.temp, ignore_errors=True)

    def wait_for_end(self, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> str:
        """The job's final state (SUCCEEDED, FAILED, STOPPED)."""
        deadline = time.time() + timeout_s
        while (state := self.status(job_id)) in ("PENDING", "RUNNING"):
            if time.time() > deadline:
                raise ClusterCommandError(f"job {job_id} still {state} after {timeout_s:.0f} s")
            time.sleep(1)
        return state
