"""Errors the SDK raises: one class per gRPC status code, plus an estimate that ended badly."""
from __future__ import annotations

import grpc


class LLCError(Exception):
    """A call failed. `code` is the gRPC status name (e.g. 'INVALID_ARGUMENT')."""

    code = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidArgument(LLCError):
    code = "INVALID_ARGUMENT"


class NotFound(LLCError):
    code = "NOT_FOUND"


class FailedPrecondition(LLCError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(LLCError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(LLCError):
    code = "UNAVAILABLE"


class Unauthenticated(LLCError):
    code = "UNAUTHENTICATED"


class DeadlineExceeded(LLCError):
    code = "DEADLINE_EXCEEDED"


class PermissionDenied(LLCError):
    """The server does not do that for clients: remote code, or a path outside its allowed roots."""

    code = "PERMISSION_DENIED"


class EstimateFailed(LLCError):
    """The estimate ran and failed; `estimate` holds its final state."""

    def __init__(self, message: str, code: str, estimate=None):
        super().__init__(message, code)
        self.estimate = estimate


class EstimateCancelled(EstimateFailed):
    code = "CANCELLED"


_BY_CODE = {c.code: c for c in (InvalidArgument, NotFound, FailedPrecondition, ResourceExhausted, Unavailable,
                                Unauthenticated, DeadlineExceeded, PermissionDenied)}


def transport_hint(message: str, tls: bool, address: str) -> str:
    """What to change when a connection failed, read from grpc's words for it."""
    if "WRONG_VERSION_NUMBER" in message or (tls and "handshake" in message.lower() and "CERTIFICATE" not in message):
        return (f"the server at {address} does not speak TLS: connect without TLS (drop tls=/root_certificates=, "
                "--tls, --root-cert)")
    if "CERTIFICATE_VERIFY_FAILED" in message:
        return (f"the server at {address} speaks TLS, but its certificate is not signed by a CA this client trusts: "
                "pass that CA with root_certificates= or --root-cert")
    if not tls and "Socket closed" in message:
        return (f"the server at {address} closed the connection at once: if it serves TLS, connect with TLS "
                "(tls=True or root_certificates=, --tls or --root-cert)")
    return f"is an LLC server running at {address}? start one with `llc serve`"


def from_rpc_error(exc: grpc.RpcError) -> LLCError:
    code = exc.code().name if hasattr(exc, "code") and exc.code() else "UNKNOWN"
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return _BY_CODE.get(code, LLCError)(details or code, code)
