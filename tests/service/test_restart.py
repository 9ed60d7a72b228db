"""`llc serve` with its embedded Ray across restarts: a real server process, the local Ray it
starts, a real SQLite store and tiny models. SIGKILL and SIGTERM mid-job, then a restart: the
estimate finishes and its events are replayed once each; the local Ray listens on loopback only;
a final stop (or `llc serve --stop`) leaves no Ray process and no temp dir behind."""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from cluster.local_ray import HeadState, adopt_head, free_port, node_processes, read_state
from llc import Client
from service.states import JobState
from service.store import JobRecord, open_store

pytestmark = pytest.mark.slow
LLC = str(Path(sys.executable).parent / "llc")
# Long enough to be still running when the restarted server is back (~7 s of sampling here), no longer.
SPEC = dict(chains=1, draws=1000, burn_in=0, context_length=16, batch_size=4, step_size=1e-3, nbeta=10.0)


class Serve:
    """`llc serve` on one store, started and stopped as a process (output kept per run)."""

    def __init__(self, tmp_path: Path, allow_path: Path):
        self.store = tmp_path / "jobs.sqlite"
        self.allow_path = allow_path  # where the tiny models and data are
        self.state_path = f"{self.store}.ray.json"
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.runs = 0
        self._log = None

    def start(self) -> float:
        """Starts the server; returns the seconds until it answered."""
        t0 = time.monotonic()
        self.address = f"127.0.0.1:{free_port()}"
        self.runs += 1
        self._log = open(self.store.parent / f"serve-{self.runs}.log", "w+")
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_DASHBOARD_ADDRESS")}
        env["RAY_AUTH_TOKEN"] = "a-token-of-the-callers-own"  # must not displace the local Ray's token
        args = ["--listen", self.address, "--store", str(self.store), "--num-cpus", "2",
                "--allow-path", str(self.allow_path)]
        self.proc = subprocess.Popen([LLC, "serve", *args], stdout=self._log, stderr=subprocess.STDOUT, env=env)
        with Client(self.address) as client:
            client.wait_ready(180)
        return time.monotonic() - t0

    def stop(self, sig: int) -> str:
        """Sends `sig`; returns the run's output once the process has exited."""
        self.proc.send_signal(sig)
        self.proc.wait(90)
        self._log.seek(0)
        out = self._log.read()
        self._log.close()
        return out


@pytest.fixture
def serve(tmp_path, tmp_path_factory):
    """A Serve; whatever a failed test leaves running (server, local Ray) is stopped after it."""
    serve = Serve(tmp_path, tmp_path_factory.getbasetemp())
    yield serve
    if serve.proc is not None and serve.proc.poll() is None:
        serve.stop(signal.SIGKILL)
    head = adopt_head(serve.state_path)
    if head is not None:
        head.stop()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def ray_processes(state: HeadState) -> list[psutil.Process]:
    return node_processes(state.mark, state.pid)


def ray_job_status(state: HeadState, estimate_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    with open(state.token_file) as f:
        client = JobSubmissionClient(state.dashboard_url, headers={"Authorization": f"Bearer {f.read()}"})
    return str(client.get_job_status(f"llc-{estimate_id}").value)


def submit_and_wait_running(address: str, model: str, data: str) -> str:
    """Submits an estimate and returns its id once its driver has reported sampling progress."""
    with Client(address, client_id="restart") as client:
        est = client.submit(model, data, **SPEC)
        for event in client.watch(est.id, after_seq=-1, timeout=300):
            if event.kind == "progress":
                return est.id
            assert event.estimate is None or not event.estimate.is_terminal, event.estimate
    raise AssertionError("the estimate ended before it reported progress")


def finished_with_events_once(address: str, estimate_id: str) -> list[int]:
    """Waits for SUCCEEDED; checks the replay from the start has every event once, in seq order."""
    with Client(address) as client:
        final = client.wait(estimate_id, timeout=300)
        assert final.state == "SUCCEEDED", (final.state, final.error)
        assert final.result is not None and len(final.result.restrictions) == 1
        events = list(client.watch(estimate_id, after_seq=-1, timeout=60))
    seqs = [e.seq for e in events if e.kind != "snapshot"]
    assert seqs == sorted(set(seqs)), seqs  # strictly increasing: no duplicates, no reordering
    assert seqs[0] == 0 and seqs == list(range(len(seqs))), seqs  # none lost either
    kinds = [e.kind for e in events if e.kind != "snapshot"]
    assert kinds[0] == "started" and "progress" in kinds and "chain" in kinds, kinds
    assert events[-1].kind == "snapshot" and events[-1].estimate.state == "SUCCEEDED"
    return seqs


def listening_sockets(procs: list[psutil.Process]) -> list[tuple[str, str, int]]:
    out = []
    for p in procs:
        try:
            for c in p.net_connections("inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.append((p.name(), c.laddr.ip, c.laddr.port))
        except psutil.Error:
            pass
    return out


def job_api_status(dashboard_url: str, token: str = "") -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        request = urllib.request.Request(f"{dashboard_url}/api/jobs/", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or addr).is_loopback


@pytest.fixture(scope="module")
def model_and_data(tiny_lm_dirs, text_jsonl):
    return str(tiny_lm_dirs["gpt2"]), str(text_jsonl)


def test_estimates_survive_sigkill_and_sigterm_of_the_embedded_server(serve, model_and_data):
    serve.start()
    state = read_state(serve.state_path)
    assert state is not None and os.path.isdir(state.temp_dir)
    try:
        # 1. SIGKILL mid-job: the local Ray (its own session) lives on with the job ...
        first = submit_and_wait_running(serve.address, *model_and_data)
        ray_procs = ray_processes(state)
        sockets = listening_sockets(ray_procs)
        gcs_port = int(state.address.rsplit(":", 1)[1])
        assert any(port == gcs_port for _, _, port in sockets), sockets  # GCS found: the check is not vacuous
        assert {"gcs_server", "raylet"} <= {name for name, _, _ in sockets}, sockets
        assert [s for s in sockets if not is_loopback(s[1])] == [], sockets
        # ... listens on loopback only, and requires Ray's token, which only this user can read.
        assert state.token_file.startswith(state.temp_dir) and os.stat(state.token_file).st_mode & 0o077 == 0
        assert job_api_status(state.dashboard_url) == 401
        assert job_api_status(state.dashboard_url, open(state.token_file).read()) == 200
        serve.stop(signal.SIGKILL)
        assert psutil.pid_exists(state.pid)
        assert ray_job_status(state, first) == "RUNNING"

        resumed_in = serve.start()
        assert ray_job_status(state, first) == "RUNNING"  # the new server follows a live job, not just its log
        t0 = time.monotonic()
        finished_with_events_once(serve.address, first)
        finished_in = time.monotonic() - t0

        # 2. SIGTERM mid-job: the server says the Ray keeps the job, and it does.
        second = submit_and_wait_running(serve.address, *model_and_data)
        out = serve.stop(signal.SIGTERM)
        assert "1 estimate is unfinished, so the local Ray cluster" in out, out
        assert "re-attached to the local Ray" in out and state.address in out, out  # run 2 re-attached
        assert psutil.pid_exists(state.pid) and ray_job_status(state, second) == "RUNNING"
        serve.start()
        assert ray_job_status(state, second) == "RUNNING"
        finished_with_events_once(serve.address, second)
        with Client(serve.address) as client:  # the first one is still there, result included
            assert client.get(first).result is not None

        # 3. SIGKILL mid-job, then `llc serve --stop`: Ray stopped for good, its estimate cancelled.
        third = submit_and_wait_running(serve.address, *model_and_data)
    finally:
        serve.stop(signal.SIGKILL)
    driver_procs = len(ray_processes(state))
    out = subprocess.run([LLC, "serve", "--store", str(serve.store), "--stop"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "stopped the local Ray cluster" in out.stdout and third in out.stdout, out
    assert not ray_processes(state)  # the job's driver and workers too, not only Ray's own processes
    assert not psutil.pid_exists(state.pid) and not os.path.exists(state.temp_dir)
    assert not os.path.exists(serve.state_path)
    store = open_store(str(serve.store))
    try:
        assert store.get(third).state == JobState.CANCELLED and "llc serve --stop" in store.get(third).error_message
        assert store.get(first).state == store.get(second).state == JobState.SUCCEEDED
    finally:
        store.close()
    print(f"\nafter SIGKILL: serving again {resumed_in:.1f} s after the restart, SUCCEEDED {finished_in:.1f} s "
          f"later; Ray processes during a job: {len(ray_procs)} ({driver_procs} before --stop), 0 after it; "
          f"listening: {json.dumps(sockets)}")


def test_a_final_sigterm_with_nothing_unfinished_stops_the_local_ray(serve):
    """Also: an estimate whose Ray job is gone (its local Ray was lost, say by a reboot) fails with
    UNAVAILABLE and says so, instead of keeping that Ray alive or hanging."""
    store = open_store(str(serve.store))
    store.create(JobRecord(id="est-lost", owner="someone", spec_json="{}", fingerprint="f"))
    store.set_submission("est-lost", "llc-est-lost")
    store.close()
    serve.start()
    state = read_state(serve.state_path)
    try:
        store = open_store(str(serve.store))
        lost = wait_for(lambda: (r := store.get("est-lost")).state.is_terminal and r, 60, "the lost estimate to end")
        store.close()
        assert lost.state == JobState.FAILED and lost.error_code == "UNAVAILABLE", lost
        assert "no longer has this estimate's job llc-est-lost" in lost.error_message
        # Another server on the same store is refused while this one runs (before any Ray starts).
        other = subprocess.run([LLC, "serve", "--listen", f"127.0.0.1:{free_port()}", "--store", str(serve.store)],
                               capture_output=True, text=True, timeout=60)
        assert other.returncode == 1 and "FAILED_PRECONDITION" in other.stderr and "another `llc serve`" in other.stderr
        assert ray_processes(state)
    finally:
        out = serve.stop(signal.SIGTERM)
    assert "stopped the local Ray cluster (no estimate was unfinished)" in out, out
    assert serve.proc.returncode == 0, out
    assert not ray_processes(state) and not os.path.exists(state.temp_dir) and not os.path.exists(serve.state_path)
    again = subprocess.run([LLC, "serve", "--store", str(serve.store), "--stop"], capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0 and "no local Ray cluster is left running" in again.stdout, again
