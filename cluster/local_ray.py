"""Local Ray clusters as subprocesses (pure Python, no torch): a head node with the
dashboard (the job API needs it) and optional extra worker nodes.

    head = start_head(num_cpus=2)          # head.address (GCS host:port), head.dashboard_url
    worker = start_worker(head.address, num_cpus=1, resources={"chain_slot": 1})
    ...; worker.stop(); head.stop()

Nodes run `ray start --block` and are stopped with SIGTERM (never `ray stop`, which
kills every Ray process on the machine). Each head gets a Ray temp dir of its own (see
private_temp_dir): with the shared /tmp/ray, jobs can land on another local cluster.
Used by `llc serve`, `llc demo` and the tests.

`start_head(joinable=False)` is a single-node cluster whose every port binds 127.0.0.1
(`llc serve`'s embedded Ray); `auth=True` adds Ray's token auth, so other local users
cannot use it either (RayNode.auth_env() is what a client of it needs). A head can outlive
its starter: `save_state` records it in a JSON file, `adopt_head` re-attaches to it later
if that process is still the one we started.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field

import psutil

from cluster.contract.errors import Unavailable

# Multi-node needs RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 on head and workers (with 0 a joining node
# panics). With 1, `ray start` replaces --node-ip-address=127.0.0.1 by the machine's address, and
# GCS, raylet, agents and the Ray client server listen on every interface (or that address).
LOCAL_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_USAGE_STATS_ENABLED": "0"}
# With 0 the node IP stays 127.0.0.1 and every Ray process binds there: a single-node cluster.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Every process of a head (raylet, workers, job drivers) inherits this mark (see node_processes).
MARK_ENV = "LLC_LOCAL_RAY_ID"
TEMP_PREFIX = "llcray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "ray")
    return here if os.path.exists(here) else (shutil.which("ray") or "ray")


def _env(temp_dir: str = "", extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **LOCAL_ENV, **(extra or {})}
    if temp_dir:
        env["RAY_TMPDIR"] = temp_dir
    return env


def private_temp_dir() -> str:
    """A Ray temp dir of this cluster's own. Ray's job supervisor finds "its" cluster (the
    RAY_ADDRESS of every job driver) through `<temp dir>/ray/ray_current_cluster`; in the shared
    /tmp that file names whichever cluster on the machine started last, so jobs would run on
    another cluster. Short, because Ray's unix sockets live under it."""
    return tempfile.mkdtemp(prefix=TEMP_PREFIX, dir="/tmp")


@dataclass
class RayNode:
    """A `ray start --block` process: our subprocess, or one adopted from an earlier starter."""

    process: subprocess.Popen | psutil.Process
    address: str  # the head's GCS address, host:port
    dashboard_url: str = ""  # head only: Ray's job API
    log_path: str = ""
    _log: object = field(default=None, repr=False)
    temp_dir: str = ""  # RAY_TMPDIR of the node's processes
    _owns_temp_dir: bool = field(default=False, repr=False)
    mark: str = ""  # MARK_ENV of the node's processes
    token_file: str = ""  # Ray's auth token (auth=True), readable by this user only

    def auth_env(self) -> dict[str, str]:
        """The environment a client of this cluster needs (Ray's own clients read it)."""
        return token_env(self.token_file) if self.token_file else {}

    def alive(self) -> bool:
        if isinstance(self.process, subprocess.Popen):
            return self.process.poll() is None
        return _running(self.process)

    def processes(self) -> list[psutil.Process]:
        """The node's processes still running (see node_processes)."""
        return node_processes(self.mark, self.process.pid)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait, then SIGKILL: `ray start --block` tears its node down on SIGTERM.
        Whatever of the node outlives that (an orphaned job driver) is killed; then the
        node's private temp dir is removed."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
                # A node stuck before it joined ignores SIGTERM: kill its whole process group
                # (its own session: start_new_session), which holds only this node's processes.
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(5)
        _kill([p for p in self.processes() if p.pid != self.process.pid])
        if self._log is not None:
            self._log.close()
        if self._owns_temp_dir and not self.alive():
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        elif self.token_file and not self.alive():
            _remove(self.token_file)

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


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _session(pid: int) -> int:
    try:
        return os.getsid(pid)
    except OSError:
        return -1


def _started_since(p: psutil.Process, t: float) -> bool:
    try:
        return p.create_time() >= t - 1.0
    except psutil.Error:
        return False


def _marked(p: psutil.Process, mark: str) -> bool:
    try:
        return p.environ().get(MARK_ENV) == mark
    except psutil.Error:  # another user's process, or gone
        return False


def node_processes(mark: str, session: int | None = None) -> list[psutil.Process]:
    """Running processes of a node: those in its session (`session`: the `ray start` pid) and those
    that carry its mark (job drivers run in sessions of their own). Both are needed: processes that
    set their title (ray::DashboardAgent, ray-dashboard-*) overwrite their environment."""
    return [p for p in psutil.process_iter() if _running(p) and ((session is not None and _session(p.pid) == session)
                                                                  or (mark and _marked(p, mark)))]


def _kill(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


def _spawn(args: list[str], name: str, temp_dir: str, log_dir: str | None = None,
           extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, object]:
    log = tempfile.NamedTemporaryFile("w", prefix=f"llc-{name}-", suffix=".log", delete=False, dir=log_dir)
    proc = subprocess.Popen([_ray_cli(), "start", "--block", "--disable-usage-stats", *args], stdout=log,
                            stderr=subprocess.STDOUT, env=_env(temp_dir, extra_env), start_new_session=True)
    return proc, log.name, log


def job_api_ready(dashboard_url: str, timeout: float = 2.0, token_file: str = "") -> bool:
    request = urllib.request.Request(f"{dashboard_url}/api/version", headers=_auth_header(token_file))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status == 200 and "ray_version" in json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _auth_header(token_file: str) -> dict[str, str]:
    if not token_file:
        return {}
    with open(token_file) as f:
        return {"Authorization": f"Bearer {f.read().strip()}"}


def token_env(token_file: str) -> dict[str, str]:
    # An empty RAY_AUTH_TOKEN: a token in the caller's environment would take precedence over the file.
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_file, "RAY_AUTH_TOKEN": ""}


def _new_token_file(directory: str) -> str:
    path = os.path.join(directory, "auth_token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32))
    return path


def start_head(num_cpus: int = 2, *, num_gpus: int | None = None, resources: dict[str, float] | None = None,
               host: str = "127.0.0.1", timeout: float = 90.0, temp_dir: str | None = None,
               joinable: bool = True, auth: bool = False) -> RayNode:
    """Starts a head node with the dashboard on free ports; returns once its job API answers.
    temp_dir: Ray's temp dir (default $RAY_TMPDIR, else a private one, removed by stop()).
    joinable=False: no other node can join, and every Ray port binds 127.0.0.1 (see LOOPBACK_ENV).
    auth=True: Ray's token auth with a new token in the temp dir (node.token_file, mode 0600)."""
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
    mark = uuid.uuid4().hex
    token_file = _new_token_file(temp_dir) if auth else ""
    extra = {MARK_ENV: mark, **({} if joinable else LOOPBACK_ENV)}
    if token_file:
        extra.update(token_env(token_file))
    # The node's own log goes with its private temp dir (removed by stop()); else to /tmp.
    proc, log_path, log = _spawn(args, "head", temp_dir, temp_dir if owns else None, extra)
    node = RayNode(proc, f"{host}:{port}", f"http://{host}:{dash}", log_path, log, temp_dir, owns, mark, token_file)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not node.alive():
                raise Unavailable(f"the Ray head node exited with code {proc.returncode}; its log ({log_path}):\n"
                                  + node.log_tail())
            if job_api_ready(node.dashboard_url, token_file=token_file):
                return node
            time.sleep(0.5)
    except BaseException:  # interrupted (SIGTERM, Ctrl-C) while starting: leave nothing behind
        node.stop()
        raise
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


# ------------------------------------------------------------------ a head that outlives its starter
@dataclass
class HeadState:
    """What `save_state` records of a head, to find it again after the starter is gone."""

    pid: int
    create_time: float  # with the pid: not a later process that reused the number
    mark: str
    address: str
    dashboard_url: str
    temp_dir: str
    owns_temp_dir: bool
    log_path: str
    token_file: str = ""


def save_state(node: RayNode, path: str) -> None:
    """Writes the head's HeadState to `path` (readable by this user only), atomically."""
    state = HeadState(node.process.pid, psutil.Process(node.process.pid).create_time(), node.mark, node.address,
                      node.dashboard_url, node.temp_dir, node._owns_temp_dir, node.log_path, node.token_file)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(state), f)
    os.replace(tmp, path)


def read_state(path: str) -> HeadState | None:
    try:
        with open(path) as f:
            return HeadState(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def adopt_head(path: str) -> RayNode | None:
    """The head recorded in `path` if it is still the process we started (same pid, start time and
    mark) and its job API answers; else None, after removing what is left of it (processes that
    carry its mark, its private temp dir, the state file)."""
    state = read_state(path)
    if state is not None:
        owns = state.owns_temp_dir and os.path.basename(state.temp_dir).startswith(TEMP_PREFIX)
        proc = _recorded_process(state)
        if proc is not None:
            node = RayNode(proc, state.address, state.dashboard_url, state.log_path, None, state.temp_dir, owns,
                           state.mark, state.token_file)
            if _answers(node):
                return node
            node.stop(timeout=10)  # hung: a head whose job API does not answer is of no use
        else:  # gone (or its pid reused): only stragglers of its session or with its mark remain
            _kill([p for p in node_processes(state.mark, state.pid) if _started_since(p, state.create_time)])
            if owns:
                shutil.rmtree(state.temp_dir, ignore_errors=True)
    _remove(path)
    return None


def _answers(node: RayNode) -> bool:
    try:
        return job_api_ready(node.dashboard_url, timeout=5.0, token_file=node.token_file)
    except OSError:  # its token file is gone: of no use
        return False


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _recorded_process(state: HeadState) -> psutil.Process | None:
    try:
        proc = psutil.Process(state.pid)
        same = abs(proc.create_time() - state.create_time) < 1.0
    except (psutil.Error, TypeError, ValueError):  # gone, or a state file with nonsense in it
        return None
    return proc if same and _running(proc) and _marked(proc, state.mark) else None
