"""Builds and runs the gRPC server: LLCService + health + reflection, auth and error interceptors.

    server = LLCServer(ServerConfig(ray_dashboard_url="http://127.0.0.1:8265"))
    port = await server.start(); ...; await server.stop()

`BackgroundServer` runs one in a thread with its own event loop (CLI, demo, tests).
"""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from llc.v1 import llc_pb2, llc_pb2_grpc

from cluster.contract.errors import Unavailable
from service.config import ServerConfig
from service.interceptors import AuthInterceptor, ErrorInterceptor
from service import reflection
from service.notify import JobNotifier
from service.runner import RayJobRunner, RunnerConfig
from service.servicer import LLCServicer
from service.store import open_store

log = logging.getLogger(__name__)
SERVICE_NAME = llc_pb2.DESCRIPTOR.services_by_name["LLCService"].full_name
# Blocking calls (the store, Ray's job client) run in the loop's default executor. Ray's calls
# can take seconds each under load; with the default min(32, cpus + 4) threads, 50 jobs being
# submitted queued every request's store call behind them (CreateEstimate p99 6 s).
IO_THREADS = 64


class LLCServer:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._runner: RayJobRunner | None = None
        self._health: health.aio.HealthServicer | None = None
        self._notifier: JobNotifier | None = None
        self.store = None

    async def start(self) -> int:
        c = self.config
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(IO_THREADS, thread_name_prefix="llc-io"))
        kwargs = {"schema": c.store_schema} if c.store_url.startswith(("postgresql://", "postgres://")) else {}
        self.store = open_store(c.store_url, **kwargs)
        notifier = self._notifier = JobNotifier()
        self._runner = RayJobRunner(self.store, RunnerConfig(dashboard_url=c.ray_dashboard_url, python=c.driver_python,
                                                             env_vars=c.driver_env, submit_retry_s=c.submit_retry_s),
                                    notifier)
        interceptors = [ErrorInterceptor()]
        if c.auth.required:
            interceptors.insert(0, AuthInterceptor(c.auth))
        # gRPC's own limit is a backstop above ours, so oversized requests get our clearer message.
        self._server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", 4 * c.max_request_bytes),
            ("grpc.max_send_message_length", 256 << 20),
            ("grpc.so_reuseport", 0)])
        llc_pb2_grpc.add_LLCServiceServicer_to_server(LLCServicer(c, self.store, self._runner, notifier), self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable(self._server, (SERVICE_NAME, health.SERVICE_NAME))
        try:
            if c.tls_cert:
                with open(c.tls_key, "rb") as key, open(c.tls_cert, "rb") as cert:
                    creds = grpc.ssl_server_credentials([(key.read(), cert.read())])
                self.port = self._server.add_secure_port(c.address, creds)
            else:
                self.port = self._server.add_insecure_port(c.address)
        except RuntimeError as exc:  # grpc says only "Failed to bind"
            self.store.close()
            raise Unavailable(f"cannot listen on {c.address} ({exc}); is another server using that port? "
                              "choose another with --listen HOST:PORT (port 0 = any free one)") from None
        await self._server.start()
        resumed = self._runner.resume()
        if resumed:
            log.info("following %d unfinished estimates: %s", len(resumed), ", ".join(resumed))
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("llc.v1 serving on port %d (store %s, Ray %s)", self.port, c.store_url, c.ray_dashboard_url)
        return self.port

    async def stop(self, grace: float = 2.0) -> None:
        """Stops serving; running estimates keep running on Ray for the next front end."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._notifier is not None:
            self._notifier.close()  # open watches end with UNAVAILABLE: clients resume elsewhere or later
        if self._server is not None:
            await self._server.stop(grace)
        if self._runner is not None:
            await self._runner.close()
        if self.store is not None:
            self.store.close()

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


class BackgroundServer:
    """An LLCServer on its own event loop thread; `start()` returns once it serves."""

    def __init__(self, config: ServerConfig):
        self.server = LLCServer(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llc-server", daemon=True)

    @property
    def address(self) -> str:
        host = self.server.config.address.rpartition(":")[0]
        return f"{host}:{self.server.port}"

    def start(self) -> "BackgroundServer":
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout=60)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            raise
        return self

    def stop(self, grace: float = 1.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(grace), self._loop).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
