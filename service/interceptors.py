"""Server interceptors: bearer-token authentication and the domain-error → status mapping."""
from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import grpc

from service.errors import bounded, to_status
from service.identity import Authenticator

log = logging.getLogger(__name__)
SERVICE_PREFIX = "/llc.v1."
# Probes (Kubernetes, load balancers) must work without credentials.
UNAUTHENTICATED_METHODS = ("/grpc.health.v1.Health/",)


def _rebuild(handler: grpc.RpcMethodHandler, unary: Callable | None, stream: Callable | None,
             deserializer: Callable | None = None) -> grpc.RpcMethodHandler:
    kw = dict(request_deserializer=deserializer or handler.request_deserializer,
              response_serializer=handler.response_serializer)
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


class Undecodable:
    """Stands in for request bytes that are not the method's message: grpc would answer UNKNOWN
    for the deserializer's exception, the wrapped handler answers INVALID_ARGUMENT instead."""

    def __init__(self, reason: str):
        self.reason = reason

    def status(self) -> tuple[grpc.StatusCode, str]:
        return grpc.StatusCode.INVALID_ARGUMENT, bounded(
            f"the request bytes are not a valid message for this method ({self.reason}); build requests from "
            "proto/llc/v1/llc.proto of this server's version (reflection lists it)")


def _decoder(deserializer: Callable) -> Callable:
    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 (protobuf's DecodeError, or a bad UTF-8 string field)
            return Undecodable(f"{type(exc).__name__}: {exc}")
    return decode


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """The one place where domain errors become gRPC statuses; anything else is INTERNAL.
    Requests that do not decode get INVALID_ARGUMENT on every unary-request method (health too)."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler  # reflection's request stream: left to grpc
        method, ours = details.method, details.method.startswith(SERVICE_PREFIX)
        decode = _decoder(handler.request_deserializer)

        async def abort(exc: Exception, context: grpc.aio.ServicerContext) -> None:
            mapped = to_status(exc)
            if mapped is None:
                log.exception("%s failed", method)
                mapped = (grpc.StatusCode.INTERNAL, bounded(f"internal error in {method}: {type(exc).__name__}: "
                                                            f"{exc} (a server bug; the server log has the traceback)"))
            await context.abort(*mapped)

        if handler.unary_unary:
            behavior = handler.unary_unary

            async def unary(request, context):
                if isinstance(request, Undecodable):
                    await context.abort(*request.status())
                if not ours:
                    return await behavior(request, context)
                try:
                    return await behavior(request, context)
                except (grpc.aio.AbortError, grpc.aio.UsageError):
                    raise
                except Exception as exc:  # noqa: BLE001 (mapped or logged in abort)
                    await abort(exc, context)

            return _rebuild(handler, unary, None, decode)
        stream_behavior = handler.unary_stream

        async def stream(request, context):
            if isinstance(request, Undecodable):
                await context.abort(*request.status())
            try:
                async for response in stream_behavior(request, context):
                    yield response
            except (grpc.aio.AbortError, grpc.aio.UsageError):
                raise
            except Exception as exc:  # noqa: BLE001
                if not ours:
                    raise
                await abort(exc, context)

        return _rebuild(handler, None, stream, decode)
