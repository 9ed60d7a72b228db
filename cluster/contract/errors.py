"""The one error model: a domain error carries (gRPC status name, message, field).

Pure Python (no grpc, no torch): raised anywhere — the front end, the driver, a Ray
worker, the engine — and mapped to a status in one place (service/errors.py). Errors
pickle with every attribute (`__reduce__`), so one raised inside a Ray actor reaches
the driver as itself, not as Ray's UnserializableException.
"""
from __future__ import annotations


def _rebuild(cls: type, message: str, field: str, code: str) -> "LLCError":
    err = cls.__new__(cls)
    LLCError.__init__(err, message, field=field)
    err.code = code
    return err


class LLCError(Exception):
    code = "INTERNAL"

    def __init__(self, message: str, *, field: str = ""):
        super().__init__(message)
        self.message = message
        self.field = field  # the request field at fault (e.g. "sampler.step_size"); "" = none

    def __reduce__(self):
        return _rebuild, (type(self), self.message, self.field, self.code)


class InvalidArgument(LLCError):
    """The request itself is wrong: a value out of range, a pattern matching nothing."""

    code = "INVALID_ARGUMENT"


class InvalidField(InvalidArgument, ValueError):
    """One named field of a request or config is wrong; the message starts with its path."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}", field=field)
        self.detail = message

    def __reduce__(self):
        return _rebuild_field, (type(self), self.field, self.detail)

    def under(self, prefix: str) -> "InvalidField":
        """The same error with its field path under `prefix` (e.g. sampler settings inside a spec)."""
        return InvalidField(f"{prefix}.{self.field}", self.detail)


def _rebuild_field(cls: type, field: str, detail: str) -> InvalidField:
    err = cls.__new__(cls)
    InvalidField.__init__(err, field, detail)
    return err


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


class Unauthenticated(LLCError):
    """No or a wrong credential."""

    code = "UNAUTHENTICATED"


class PermissionDenied(LLCError):
    """The caller is known but the server does not allow what it asked (e.g. remote code)."""

    code = "PERMISSION_DENIED"


class Cancelled(LLCError):
    """The job was cancelled (the driver got SIGTERM from stop_job)."""

    code = "CANCELLED"


class DeadlineExceeded(LLCError):
    """The job ran past its timeout."""

    code = "DEADLINE_EXCEEDED"


def reported(code: str, message: str, field: str = "") -> LLCError:
    """The domain error for a status name reported by another process (the driver's error event)."""
    cls = next((c for c in _BY_CODE if c.code == code), LLCError)
    return _rebuild(cls, message, field, code)


_BY_CODE = (InvalidArgument, NotFound, FailedPrecondition, ResourceExhausted, Unavailable, Unauthenticated,
            PermissionDenied, Cancelled, DeadlineExceeded)
