"""Domain errors, each tagged with the gRPC status code it maps to.

Pure Python (no grpc import): the driver reports `code` in its `error` event and
the front end maps it to a status in one place (service/errors.py).
"""
from __future__ import annotations


class LLCError(Exception):
    code = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(LLCError):
    """The request itself is wrong: a value out of range, a pattern matching nothing."""

    code = "INVALID_ARGUMENT"


class NotFound(LLCError):
    """A model, dataset, revision, column or job that does not exist."""

    code = "NOT_FOUND"


class FailedPrecondition(LLCError):
    """The request is well-formed but the system is not in a state to run it."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(LLCError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(LLCError):
    code = "UNAVAILABLE"


class Cancelled(LLCError):
    """The job was cancelled (the driver got SIGTERM from stop_job)."""

    code = "CANCELLED"


class DeadlineExceeded(LLCError):
    """The job ran past its timeout."""

    code = "DEADLINE_EXCEEDED"
