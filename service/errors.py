"""Domain errors → gRPC status codes, in one place (used by the error interceptor).

Every domain error is a cluster.errors.LLCError carrying its status name in `code`.
"""
from __future__ import annotations

import grpc

from cluster.errors import LLCError


def status_code(name: str) -> grpc.StatusCode:
    """The grpc.StatusCode called `name` (e.g. 'NOT_FOUND'); INTERNAL for unknown names."""
    return getattr(grpc.StatusCode, name, grpc.StatusCode.INTERNAL)


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """(code, message) for a domain error; None for anything else (a bug: INTERNAL)."""
    if isinstance(exc, LLCError):
        return status_code(exc.code), exc.message
    return None
