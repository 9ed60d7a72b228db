"""Wakes watchers of a job when the runner stores something for it (push within one process;
watchers also re-read the store now and then, which covers a store shared by several front ends)."""
from __future__ import annotations

import asyncio


class JobNotifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def waiter(self, job_id: str) -> asyncio.Event:
        """Take this before reading the store, then wait on it: no wake-up is lost in between."""
        event = self._events.get(job_id)
        if event is None or event.is_set():
            event = self._events[job_id] = asyncio.Event()
        return event

    def notify(self, job_id: str) -> None:
        event = self._events.pop(job_id, None)
        if event is not None:
            event.set()

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
