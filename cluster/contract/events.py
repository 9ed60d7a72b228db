"""Progress events from a job's driver to the front end.

The driver prints one event per line on stdout as `LLC_EVENT <json>`; the front
end follows the Ray job's log stream (push, not polling) and parses these lines.
Logs outlive the front end, so a restarted front end re-reads them and skips
events whose `seq` it already stored. Pure Python: both sides import it.

Event types (every event has `type`, `seq` (0, 1, 2, ... per job) and `time`):
  started     chains_total, restrictions: [name, ...], provenance: {...}
  preview     restrictions: [{name, tensors: [{name, shape, elements}], elements}]
  progress    restriction, chain, step, total_steps, llc_running
  chain       restriction, chain, status (succeeded|diverged|failed|retrying), llc, attempt, message
  result      result: the job's result document (see cluster.driver)
  error       code (a gRPC status name such as INVALID_ARGUMENT), message
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Iterable, Iterator, TextIO

PREFIX = "LLC_EVENT "
TYPES = ("started", "preview", "progress", "chain", "result", "error")


def encode(event: dict[str, Any]) -> str:
    return PREFIX + json.dumps(event, separators=(",", ":"), allow_nan=True)


def parse_lines(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Events in a log (a chunk may hold several lines or none); other lines are skipped."""
    for line in lines:
        for part in line.splitlines():
            if part.startswith(PREFIX):
                try:
                    yield json.loads(part[len(PREFIX):])
                except json.JSONDecodeError:
                    continue  # a line cut by the log transport; the next event still parses


class EventWriter:
    """Numbers events and writes them, flushed, one per line."""

    def __init__(self, stream: TextIO | None = None):
        self._stream = stream or sys.stdout
        self._seq = 0

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        assert type_ in TYPES, type_
        event = {"type": type_, "seq": self._seq, "time": time.time(), **fields}
        self._seq += 1
        self._stream.write(encode(event) + "\n")
        self._stream.flush()
        return event
