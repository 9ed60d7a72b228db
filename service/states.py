"""The estimate job's state machine: QUEUED → RUNNING → SUCCEEDED | FAILED | CANCELLED."""
from __future__ import annotations

import enum


class JobState(str, enum.Enum):
    QUEUED = "QUEUED"  # stored; submitted to Ray or waiting for resources
    RUNNING = "RUNNING"  # the driver reported `started` (or any event)
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    def can_become(self, new: "JobState") -> bool:
        return new in TRANSITIONS[self]

    def predecessors(self) -> tuple["JobState", ...]:
        """States from which this one is reachable in one step (for compare-and-set updates)."""
        return tuple(s for s, nexts in TRANSITIONS.items() if self in nexts)


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # A job may finish straight from QUEUED: a driver that fails before `started`,
    # or a result whose `started` line was lost with a restarted front end.
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}
