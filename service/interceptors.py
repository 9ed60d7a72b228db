"""Server interceptors: bearer-token authentication and the domain-error → status mapping."""
from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import grpc

from service.errors import to_status
from service.identity import Authenticator

log = logging.getLogger(__name__)
SERVICE_PREFIX = "/llc.v1."
# Probes (Kubernetes, load balancers) must work without credentials.
UNAUTHENTICATED_METHODS = ("/grpc.health.v1.Health/",)


def _rebuild(handler: grpc.RpcMethodHandler, unary: Callable | None, stream: Callable | None) -> grpc.RpcMethodHandler:
    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    return grpc.stream_stream_rpc_method_handler(stream, **kw)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """With tokens configured, every call but health checks needs `authorization: Bearer <token>`
    of a known principal (the servicer asks the same Authenticator who it is)."""

    def __init__(self, auth: Authenticator):
        self._auth = auth

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(UNAUTHENTICATED_METHODS):
            return handler
        if self._auth.principal(details.invocation_metadata) is not None:
            return handler
        message = ("missing or wrong bearer token: pass token=... to llc.Client, --token or LLC_TOKEN to the CLI, "
                   "or the metadata 'authorization: Bearer <token>'")

        async def refuse(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def refuse_stream(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield  # pragma: no cover (makes this an async generator)

        return _rebuild(handler, refuse, refuse_stream)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """The one place where domain errors become gRPC statuses; anything else is INTERNAL."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICE_PREFIX):
            return handler
        method = details.method

        async def abort(exc: Exception, context: grpc.aio.ServicerContext) -> None:
            mapped = to_status(exc)
            if mapped is None:
                log.exception("%s failed", method)
                mapped = (grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}: {exc} "
                                                    "(a server bug; the server log has the traceback)")
            await context.abort(*mapped)

        if handler.unary_unary:
            behavior = handler.unary_unary

            async def unary(request, context):
                try:
                    return await behavior(request, context)
                except (grpc.aio.AbortError, grpc.aio.UsageError):
                    raise
                except Exception as exc:  # noqa: BLE001 (mapped or logged in abort)
                    await abort(exc, context)

            return _rebuild(handler, unary, None)
        if handler.unary_stream:
            stream_behavior = handler.unary_stream

            async def stream(request, context):
                try:
                    async for response in stream_behavior(request, context):
                        yield response
                except (grpc.aio.AbortError, grpc.aio.UsageError):
                    raise
                except Exception as exc:  # noqa: BLE001
                    await abort(exc, context)

            return _rebuild(handler, None, stream)
        return handler
