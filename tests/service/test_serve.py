"""`llc serve`: where it finds Ray, and the command itself as a process (SIGTERM = clean stop)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.contract.errors import Unavailable
from cluster.local_ray import free_port
from llc import Client
from service.serve import resolve_dashboard

LLC = str(Path(sys.executable).parent / "llc")


@pytest.mark.parametrize("flag,env,expected", [
    ("", {}, ""),  # nothing given: start a local cluster
    ("http://10.0.0.5:8265", {"RAY_ADDRESS": "10.0.0.9:6379"}, "http://10.0.0.5:8265"),
    ("10.0.0.5:8265", {}, "http://10.0.0.5:8265"),
    ("", {"RAY_DASHBOARD_ADDRESS": "http://h:1"}, "http://h:1"),
    ("", {"RAY_ADDRESS": "http://h:8265"}, "http://h:8265"),
])
def test_resolve_dashboard(monkeypatch, flag, env, expected):
    for name in ("RAY_ADDRESS", "RAY_DASHBOARD_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert resolve_dashboard(flag) == expected


def test_ray_address_without_a_job_api_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv("RAY_DASHBOARD_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    with pytest.raises(Unavailable, match="--ray-dashboard"):
        resolve_dashboard("")


def serve(tmp_path, *args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if "--store" not in args:
        args = ("--store", str(tmp_path / "j.sqlite"), *args)
    proc = subprocess.Popen([LLC, "serve", "--listen", f"127.0.0.1:{port}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_DASHBOARD_ADDRESS")})
    return proc, f"127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return out


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_serve_joins_a_given_cluster_and_stops_cleanly_on_sigterm(tmp_path, backend):
    store_args, schema = [], ""
    if backend == "postgres":
        import uuid

        from tests.fixtures.service import postgres_url

        schema = f"llc_test_{uuid.uuid4().hex[:12]}"
        store_args = ["--store", postgres_url(), "--store-schema", schema]
    proc, address = serve(tmp_path, "--ray-dashboard", f"http://127.0.0.1:{free_port()}", *store_args)
    try:
        with Client(address) as client:
            client.wait_ready(60)
            assert client.list() == []
    finally:
        out = stop(proc)
        if schema:
            from service.store import open_store

            cleanup = open_store(postgres_url(), schema=schema)
            cleanup.drop()
            cleanup.close()
    assert proc.returncode == 0, out
    assert "serving on" in out and "stopping" in out and "starting a local Ray" not in out
    assert ("postgresql://" in out) == (backend == "postgres")  # it used the store it was given


@pytest.mark.slow
def test_serve_embedded_default_starts_and_stops_a_local_ray(tmp_path):
    proc, address = serve(tmp_path, "--num-cpus", "1")
    try:
        with Client(address) as client:
            client.wait_ready(120)
            assert client.list() == []
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert "starting a local Ray cluster (1 CPUs)" in out and "local Ray: 127.0.0.1:" in out


def test_serve_with_bad_settings_says_what_to_change(tmp_path):
    out = subprocess.run([LLC, "serve", "--listen", "nonsense", "--ray-dashboard", "http://127.0.0.1:1",
                          "--store", str(tmp_path / "j.sqlite")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "INVALID_ARGUMENT" in out.stderr and "host:port" in out.stderr
    assert "Traceback" not in out.stderr
