"""Wakes watchers of a job when the runner stores something for it (push within one process;
watchers also re-read the store now and then, which covers a store shared by several front ends)."""
from __future__ import annotations

import asyncio


class JobNotifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # the watchers' loop
        self.closing = False  # the server is stopping: watchers end and clients reconnect elsewhere/later

    def waiter(self, job_id: str) -> asyncio.Event:
        """Take this before reading the store, then wait on it: no wake-up is lost in between."""
        self._loop = asyncio.get_running_loop()
        event = self._events.get(job_id)
        if self.closing:
            event = asyncio.Event()
            event.set()
            return event
        if event is None or event.is_set():
            event = self._events[job_id] = asyncio.Event()
        return event

    def close(self) -> None:
        self.closing = True
        for event in self._events.values():
            event.set()
        self._events.clear()

    def notify(self, job_id: str) -> None:
        """Wakes the job's watchers; callable from any thread (the tracker's store calls run off the loop)."""
        loop = self._loop
        if loop is not None and not _running_in(loop):
            try:
                loop.call_soon_threadsafe(self.notify, job_id)  # asyncio.Event is not thread-safe
            except RuntimeError:  # the loop is closed: no watcher is left to wake
                pass
            return
        event = self._events.pop(job_id, None)
        if event is not None:
            event.set()

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass


def _running_in(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:  # no loop in this thread
        return False
