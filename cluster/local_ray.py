"""Local Ray clusters as subprocesses (pure Python, no torch): a head node with the
dashboard (the job API needs it) and optional extra worker nodes.

    head = start_head(num_cpus=2)          # head.address (GCS host:port), head.dashboard_url
    worker = start_worker(head.address, num_cpus=1, resources={"chain_slot": 1})
    ...; worker.stop(); head.stop()

Nodes run `ray start --block` and are stopped with SIGTERM (never `ray stop`, which
kills every Ray process on the machine). Each head gets a Ray temp dir of its own (see
private_temp_dir): with the shared /tmp/ray, jobs can land on another local cluster.
Used by `llc serve`, `llc demo` and the tests.
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
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from cluster.errors import Unavailable

# Multi-node needs RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 on head and workers (with 0 a joining node
# panics); --node-ip-address=127.0.0.1 keeps everything on loopback anyway.
LOCAL_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "ray")
    return here if os.path.exists(here) else (shutil.which("ray") or "ray")


def _env(temp_dir: str = "") -> dict[str, str]:
    env = {**os.environ, **LOCAL_ENV}
    if temp_dir:
        env["RAY_TMPDIR"] = temp_dir
    return env


def private_temp_dir() -> str:
    """A Ray temp dir of this cluster's own. Ray's job supervisor finds "its" cluster (the
    RAY_ADDRESS of every job driver) through `<temp dir>/ray/ray_current_cluster`; in the shared
    /tmp that file names whichever cluster on the machine started last, so jobs would run on
    another cluster. Short, because Ray's unix sockets live under it."""
    return tempfile.mkdtemp(prefix="llcray", dir="/tmp")


@dataclass
class RayNode:
    """A `ray start --block` subprocess."""

    process: subprocess.Popen
    address: str  # the head's GCS address, host:port
    dashboard_url: str = ""  # head only: Ray's job API
    log_path: str = ""
    _log: object = field(default=None, repr=False)
    temp_dir: str = ""  # RAY_TMPDIR of the node's processes
    _owns_temp_dir: bool = field(default=False, repr=False)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait, then SIGKILL: `ray start --block` tears its node down on SIGTERM."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                # A node stuck before it joined ignores SIGTERM: kill its whole process group
                # (its own session: start_new_session), which holds only this node's processes.
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(5)
        if self._log is not None:
            self._log.close()
        if self._owns_temp_dir and not self.alive():
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> "RayNode":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _spawn(args: list[str], name: str, temp_dir: str, log_dir: str | None = None) -> tuple[subprocess.Popen, str, object]:
    log = tempfile.NamedTemporaryFile("w", prefix=f"llc-{name}-", suffix=".log", delete=False, dir=log_dir)
    proc = subprocess.Popen([_ray_cli(), "start", "--block", "--disable-usage-stats", *args], stdout=log,
                            stderr=subprocess.STDOUT, env=_env(temp_dir), start_new_session=True)
    return proc, log.name, log


def job_api_ready(dashboard_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{dashboard_url}/api/version", timeout=timeout) as r:
            return r.status == 200 and "ray_version" in json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_head(num_cpus: int = 2, *, num_gpus: int | None = None, resources: dict[str, float] | None = None,
               host: str = "127.0.0.1", timeout: float = 90.0, temp_dir: str | None = None) -> RayNode:
    """Starts a head node with the dashboard on free ports; returns once its job API answers.
    temp_dir: Ray's temp dir (default $RAY_TMPDIR, else a private one, removed by stop())."""
    owns = not (temp_dir or os.environ.get("RAY_TMPDIR"))
    temp_dir = temp_dir or os.environ.get("RAY_TMPDIR") or private_temp_dir()
    port, dash = free_port(), free_port()
    args = ["--head", f"--port={port}", f"--node-ip-address={host}", f"--dashboard-host={host}",
            f"--dashboard-port={dash}", f"--num-cpus={num_cpus}",
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"]
    if num_gpus is not None:
        args.append(f"--num-gpus={num_gpus}")
    if resources:
        args.append(f"--resources={json.dumps(resources)}")
    # The node's own log goes with its private temp dir (removed by stop()); else to /tmp.
    proc, log_path, log = _spawn(args, "head", temp_dir, temp_dir if owns else None)
    node = RayNode(proc, f"{host}:{port}", f"http://{host}:{dash}", log_path, log, temp_dir, owns)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not node.alive():
            raise Unavailable(f"the Ray head node exited with code {proc.returncode}; its log ({log_path}):\n"
                              + node.log_tail())
        if job_api_ready(node.dashboard_url):
            return node
        time.sleep(0.5)
    node.stop()
    raise Unavailable(f"the Ray head node's job API did not answer within {timeout:.0f} s; log ({log_path}):\n"
                      + node.log_tail())


def start_worker(head_address: str, num_cpus: int = 1, resources: dict[str, float] | None = None, *,
                 num_gpus: int | None = None, host: str = "127.0.0.1", timeout: float = 60.0,
                 temp_dir: str | None = None) -> RayNode:
    """Starts another local node joined to `head_address`; returns once it has joined
    (its resources show up in the cluster a moment later)."""
    args = [f"--address={head_address}", f"--node-ip-address={host}", f"--num-cpus={num_cpus}",
            f"--dashboard-agent-listen-port={free_port()}"]
    if num_gpus is not None:
        args.append(f"--num-gpus={num_gpus}")
    if resources:
        args.append(f"--resources={json.dumps(resources)}")
    temp_dir = temp_dir or os.environ.get("RAY_TMPDIR", "")  # pass the head's node.temp_dir to share it
    proc, log_path, log = _spawn(args, "worker", temp_dir)
    node = RayNode(proc, head_address, "", log_path, log, temp_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not node.alive():
            raise Unavailable(f"the Ray worker node exited with code {proc.returncode}; log ({log_path}):\n"
                              + node.log_tail())
        if "Ray runtime started" in node.log_tail(200):
            return node
        time.sleep(0.3)
    node.stop(timeout=5)
    raise Unavailable(f"the Ray worker node did not join {head_address} within {timeout:.0f} s; is the head "
                      f"running there? log ({log_path}):\n" + node.log_tail())
