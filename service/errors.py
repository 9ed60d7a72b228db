"""Domain errors → gRPC status codes, in one place (used by the error interceptor).

Every domain error is a cluster.contract.errors.LLCError carrying its status name in `code`.
"""
from __future__ import annotations

import grpc

from cluster.contract.errors import LLCError

# The message travels percent-encoded in the grpc-message trailer, and gRPC's default metadata
# limit is 8 KiB: a longer one turns the real error into RESOURCE_EXHAUSTED on the client.
MAX_DETAILS_BYTES = 4096


def status_code(name: str) -> grpc.StatusCode:
    """The grpc.StatusCode called `name` (e.g. 'NOT_FOUND'); INTERNAL for unknown names."""
    return getattr(grpc.StatusCode, name, grpc.StatusCode.INTERNAL)


def _encoded_size(char: str) -> int:
    return sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in char.encode("utf-8", "replace"))


def _prefix(text: str, budget: int) -> str:
    """The longest prefix of `text` whose percent-encoded size is within `budget` bytes."""
    for i, char in enumerate(text):
        budget -= _encoded_size(char)
        if budget < 0:
            return text[:i]
    return text


def bounded(message: str, limit: int = MAX_DETAILS_BYTES) -> str:
    """`message`, cut in the middle when its percent-encoded form exceeds `limit` bytes (an
    echoed client value may be a megabyte); the start says what is wrong, the end what to do."""
    if len(message) <= limit and sum(map(_encoded_size, message)) <= limit:  # every char takes >= 1 byte
        return message
    head = _prefix(message, limit // 2 - 40)
    tail = _prefix(message[::-1], limit // 2 - 40)[::-1]
    return f"{head} ... [{len(message) - len(head) - len(tail)} characters cut] ... {tail}"


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """(code, message) for a domain error; None for anything else (a bug: INTERNAL)."""
    if isinstance(exc, LLCError):
        return status_code(exc.code), bounded(exc.message)
    return None
