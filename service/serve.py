"""`llc serve`: the front end with its embedded defaults (a local Ray cluster and SQLite),
or joined to an existing cluster (RAY_ADDRESS / --ray-dashboard)."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from urllib.parse import urlparse

from cluster.errors import InvalidArgument, Unavailable
from cluster.local_ray import RayNode, job_api_ready, start_head
from service.config import ServerConfig
from service.server import LLCServer

log = logging.getLogger("llc.serve")


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
    print("stopping: running estimates keep running on Ray and resume on the next start", flush=True)
    await server.stop()


def run(*, ray_dashboard: str = "", num_cpus: int | None = None, **settings) -> None:
    """Serves until SIGINT/SIGTERM. Starts (and afterwards stops) a local Ray head unless a
    cluster is given."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    url = resolve_dashboard(ray_dashboard)
    head: RayNode | None = None
    if not url:
        cpus = num_cpus or os.cpu_count() or 1
        print(f"starting a local Ray cluster ({cpus} CPUs) ...", flush=True)
        head = start_head(num_cpus=cpus)
        url = head.dashboard_url
        print(f"local Ray: {head.address}, job API {url}", flush=True)
    try:
        config = ServerConfig(ray_dashboard_url=url, **settings)
        asyncio.run(_serve(config))
    except InvalidArgument:
        raise
    finally:
        if head is not None:
            head.stop()
