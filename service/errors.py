"""Domain errors → gRPC status codes, in one place (used by the error interceptor).

cluster.errors defines the domain errors (each carries its status name in `code`);
the front end adds the two only it raises.
"""
from __future__ import annotations

import grpc

from cluster.engine.config import ConfigError
from cluster.errors import LLCError


class Unauthenticated(LLCError):
    code = "UNAUTHENTICATED"


class Cancelled(LLCError):
    code = "CANCELLED"


def status_code(name: str) -> grpc.StatusCode:
    """The grpc.StatusCode called `name` (e.g. 'NOT_FOUND'); INTERNAL for unknown names."""
    return getattr(grpc.StatusCode, name, grpc.StatusCode.INTERNAL)


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """(code, message) for a domain error; None for anything else (a bug: INTERNAL)."""
    if isinstance(exc, LLCError):
        return status_code(exc.code), exc.message
    if isinstance(exc, ConfigError):  # a sampler setting out of range
        return grpc.StatusCode.INVALID_ARGUMENT, f"spec.sampler.{exc}"
    return None
