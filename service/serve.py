"""`llc serve`: the front end with its embedded defaults (a local Ray cluster and SQLite),
or joined to an existing cluster (RAY_ADDRESS / --ray-dashboard).

The embedded Ray binds 127.0.0.1 only, requires Ray's token auth (a fresh token, readable by
this user only, in its private temp dir), and outlives the front end while estimates are
unfinished: it is recorded next to the store (`<store>.ray.json`), and the next `llc serve`
with that store re-attaches to it, so the estimates finish and keep their results. It stops,
with its processes and temp dir, when the server stops with nothing unfinished, or with
`llc serve --stop`. `<store>.lock` keeps a second server off the same store and Ray.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import signal
from typing import IO
from urllib.parse import urlparse

from cluster.contract.errors import FailedPrecondition, Unavailable
from cluster.local_ray import RayNode, adopt_head, job_api_ready, save_state, start_head
from service.config import ServerConfig
from service.server import LLCServer
from service.states import JobState
from service.store import open_store

log = logging.getLogger("llc.serve")
STOPPED_BY_FLAG = "cancelled by `llc serve --stop`, which stopped the local Ray cluster that ran it"


def resolve_dashboard(flag: str = "") -> str:
    """The Ray job API to use: --ray-dashboard, RAY_DASHBOARD_ADDRESS, an http RAY_ADDRESS, or the
    default dashboard port (8265) of RAY_ADDRESS's host. '' = none given: start a local cluster."""
    url = flag or os.environ.get("RAY_DASHBOARD_ADDRESS", "")
    ray_address = os.environ.get("RAY_ADDRESS", "")
    if not url and ray_address.startswith(("http://", "https://")):
        url = ray_address
    if not url and ray_address:
        host = urlparse(f"//{ray_address}").hostname or "127.0.0.1"
        url = f"http://{host}:8265"
        if not job_api_ready(url):
            raise Unavailable(f"RAY_ADDRESS={ray_address} is set but no Ray job API answers at {url}; pass the "
                              "dashboard URL with --ray-dashboard http://HOST:PORT or RAY_DASHBOARD_ADDRESS")
    if url and not url.startswith(("http://", "https://")):
        url = f"http://{url}"
    return url


def local_ray_state_path(store_url: str, schema: str) -> str:
    """Where the embedded Ray of this store is recorded: next to a SQLite file; for PostgreSQL in
    the working directory, named after the database and schema."""
    if store_url.startswith(("postgresql://", "postgres://")):
        digest = hashlib.sha256(f"{store_url}#{schema}".encode()).hexdigest()[:12]
        return os.path.abspath(f"llc-local-ray-{digest}.json")
    path = store_url[len("sqlite:///"):] if store_url.startswith("sqlite:///") else store_url
    return os.path.abspath(path) + ".ray.json"


def hold_store_lock(state_path: str, store_url: str) -> IO:
    """An exclusive lock on the store's embedded Ray, held while this process lives (the kernel
    drops it on any exit, SIGKILL included)."""
    lock_path = state_path.removesuffix(".ray.json").removesuffix(".json") + ".lock"
    f = open(lock_path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise FailedPrecondition(f"another `llc serve` (pid {holder}) is using the store {store_url} and its local "
                                 "Ray; stop it first (SIGTERM), or give this one another --store") from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def _forget(state_path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(state_path)


def _store(store_url: str, schema: str):
    kwargs = {"schema": schema} if store_url.startswith(("postgresql://", "postgres://")) else {}
    return open_store(store_url, **kwargs)


def unfinished_estimates(store_url: str, schema: str) -> int | None:
    """How many estimates of the store are queued or running; None if the store cannot be read."""
    try:
        store = _store(store_url, schema)
    except Exception as exc:  # noqa: BLE001 (reported; the caller keeps Ray to be safe)
        log.warning("cannot read the store %s: %s", store_url, exc)
        return None
    try:
        return len(store.active())
    finally:
        store.close()


async def _serve(config: ServerConfig, ready=None) -> None:
    server = LLCServer(config)
    port = await server.start()
    host = config.address.rpartition(":")[0]
    print(f"llc.v1 serving on {host}:{port} (store {config.store_url}, Ray job API {config.ray_dashboard_url})",
          flush=True)
    if ready is not None:
        ready(f"{host}:{port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("stopping the server", flush=True)
    await server.stop()


def _embedded_ray(state_path: str, num_cpus: int | None) -> RayNode:
    """The store's local Ray left running by an earlier server, or a new one (recorded)."""
    head = adopt_head(state_path)
    if head is not None:
        print(f"re-attached to the local Ray left running by an earlier server: {head.address} "
              f"(pid {head.process.pid}), job API {head.dashboard_url}", flush=True)
        return head
    cpus = num_cpus or os.cpu_count() or 1
    print(f"starting a local Ray cluster ({cpus} CPUs) ...", flush=True)
    head = start_head(num_cpus=cpus, joinable=False, auth=True)
    try:
        save_state(head, state_path)
    except BaseException:
        head.stop()
        raise
    print(f"local Ray: {head.address}, job API {head.dashboard_url} (on 127.0.0.1 only, with Ray's token auth; "
          f"recorded in {state_path})", flush=True)
    return head


def _leave_or_stop(head: RayNode, state_path: str, store_url: str, schema: str) -> None:
    """Stops the local Ray for good if nothing is unfinished; else leaves it running its jobs."""
    left = unfinished_estimates(store_url, schema)
    if left == 0:
        head.stop()
        _forget(state_path)
        print("stopped the local Ray cluster (no estimate was unfinished); its processes and temp dir are gone",
              flush=True)
        return
    what = f"{left} estimate{'s are' if left != 1 else ' is'}" if left else "estimates may be"
    print(f"{what} unfinished, so the local Ray cluster (pid {head.process.pid}) keeps running them: start "
          f"`llc serve --store {store_url}` again to follow them and get their results, or stop that Ray with "
          f"`llc serve --store {store_url} --stop` (they are then cancelled)", flush=True)


def stop_local_ray(store_url: str, schema: str) -> None:
    """`llc serve --stop`: stops the store's local Ray left running by an earlier server, and
    cancels the estimates it was running."""
    state_path = local_ray_state_path(store_url, schema)
    lock = hold_store_lock(state_path, store_url)
    try:
        head = adopt_head(state_path)  # a dead one's remains are removed here
        if head is None:
            print(f"no local Ray cluster is left running for the store {store_url}", flush=True)
            return
        store = _store(store_url, schema)
        try:
            cancelled = [rec.id for rec in store.active()
                         if store.transition(rec.id, JobState.CANCELLED, error_code="CANCELLED",
                                             error_message=STOPPED_BY_FLAG) is not None]
        finally:
            store.close()
        head.stop()
        _forget(state_path)
        print(f"stopped the local Ray cluster (pid {head.process.pid}); its processes and temp dir are gone; "
              f"cancelled {len(cancelled)} unfinished estimate(s){': ' + ', '.join(cancelled) if cancelled else ''}",
              flush=True)
    finally:
        lock.close()


def run(*, ray_dashboard: str = "", num_cpus: int | None = None, stop: bool = False, **settings) -> None:
    """Serves until SIGINT/SIGTERM. Without a cluster given, uses the store's local Ray (see the
    module docstring); `stop=True` stops that Ray instead of serving."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store_url = settings.get("store_url") or ServerConfig.store_url
    schema = settings.get("store_schema") or ServerConfig.store_schema
    if stop:
        stop_local_ray(store_url, schema)
        return
    url = resolve_dashboard(ray_dashboard)
    # Settings are checked before any Ray starts (the job API URL is filled in below).
    config = ServerConfig(ray_dashboard_url=url or "http://127.0.0.1:8265", **settings)
    if url:
        asyncio.run(_serve(config))
        print("stopped: running estimates keep running on that Ray cluster; the next server on this store "
              "follows them", flush=True)
        return
    state_path = local_ray_state_path(store_url, schema)
    lock = hold_store_lock(state_path, store_url)
    head: RayNode | None = None
    try:
        head = _embedded_ray(state_path, num_cpus)
        os.environ.update(head.auth_env())  # the runner's JobSubmissionClient (Ray) reads the token from here
        asyncio.run(_serve(dataclasses.replace(config, ray_dashboard_url=head.dashboard_url)))
    finally:
        if head is not None:
            _leave_or_stop(head, state_path, store_url, schema)
        lock.close()
