"""A job's life in the store, from plain events: driver events → stored events → progress → state.

No Ray and no asyncio here: `service/runner.py` (the Ray jobs adapter) reads the driver's log
and calls these blocking store operations off the event loop (`asyncio.to_thread`); tests call
them directly with event dicts. The rules:

- each event is stored once, by its `seq` (a re-read log adds nothing);
- the first new event moves QUEUED → RUNNING; progress folds every new event (service/progress.py);
- `result` → SUCCEEDED with the result (a trajectory's cached units merged in); `error` → FAILED,
  or CANCELLED for the driver's CANCELLED, keeping the chains that finished as a partial result;
- a Ray job that ended without either is judged from its Ray status and last log lines.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

from cluster.contract.events import parse_lines
from service import job_progress as progress_mod
from service.notify import JobNotifier
from service.states import JobState
from service.store import JobRecord, JobStore

log = logging.getLogger(__name__)


class JobTracker:
    def __init__(self, store: JobStore, notifier: JobNotifier):
        self.store, self.notifier = store, notifier
        self._cache_plans: dict[str, Any] = {}  # job id -> service.unit_cache.CachePlan (trajectories)

    def is_terminal(self, job_id: str) -> bool:
        rec = self.store.get(job_id)
        return rec is None or rec.state.is_terminal

    def ingest(self, job_id: str, events: Iterable[Any]) -> bool:
        """Stores the driver's new events and moves the job on; True once the job is terminal."""
        events = [e for e in events if isinstance(e, dict) and isinstance(e.get("seq"), int)]
        new = self.store.add_events(job_id, events) if events else []
        if new:
            self._apply(job_id, new)
        return self.is_terminal(job_id)

    def _apply(self, job_id: str, new: list[dict[str, Any]]) -> None:
        rec = self.store.get(job_id)
        prog = rec.progress or progress_mod.initial(rec.spec)
        for event in new:
            progress_mod.apply(prog, event)
        self.store.set_progress(job_id, prog)
        if rec.state == JobState.QUEUED:
            self.store.transition(job_id, JobState.RUNNING)
        for event in new:
            if event.get("type") == "result":
                result = event.get("result") or {}
                if rec.spec.get("checkpoints"):  # a trajectory: cached units merged in, new ones stored
                    result = self._trajectory_result(rec, result)
                self.store.set_progress(job_id, progress_mod.finish(prog))
                self.store.transition(job_id, JobState.SUCCEEDED, result=result)
            elif event.get("type") == "error":
                code = str(event.get("code") or "INTERNAL")
                # The driver reports CANCELLED when its Ray job is stopped (by us or anyone else).
                state = JobState.CANCELLED if code == "CANCELLED" else JobState.FAILED
                # Chains that finished before the failure stay available as a partial result.
                self.store.transition(job_id, state, error_code=code, result=event.get("partial_result"),
                                      error_message=str(event.get("message") or "the driver reported an error"))
        self.notifier.notify(job_id)

    def ray_job_ended(self, job_id: str, sid: str, status: str, ray_message: str, log_text: str,
                      tail_lines: int = 20) -> None:
        """The Ray job ended (`status`: SUCCEEDED, FAILED or STOPPED); `log_text` is its whole log,
        read once more in case the stream missed the end."""
        if self.ingest(job_id, parse_lines(log_text.splitlines())):
            return
        tail = "\n".join(log_text.rstrip().splitlines()[-tail_lines:])
        if status == "STOPPED":
            self.finish(job_id, JobState.CANCELLED, code="CANCELLED",
                        message=f"the Ray job {sid} was stopped outside this service")
        elif status == "SUCCEEDED":
            self.finish(job_id, JobState.FAILED, code="INTERNAL",
                        message=f"the driver exited without a result; last log lines:\n{tail}")
        else:
            self.finish(job_id, JobState.FAILED, code="INTERNAL",
                        message=f"the driver failed ({ray_message.strip()}); last log lines:\n{tail}")

    def finish(self, job_id: str, state: JobState, *, code: str, message: str) -> None:
        self.store.transition(job_id, state, error_code=code, error_message=message)
        self.notifier.notify(job_id)

    def cancel(self, rec: JobRecord, reason: str) -> tuple[JobRecord | None, str]:
        """CANCELLED (None if it had already ended), and the Ray submission that landed after `rec`
        was read ("" if none), which the caller must stop too."""
        done = self.store.transition(rec.id, JobState.CANCELLED, error_code="CANCELLED", error_message=reason)
        self.notifier.notify(rec.id)
        later = self.store.get(rec.id)
        landed = later.submission_id if done is not None and later is not None and not rec.submission_id else ""
        return done, landed or ""

    def submitted(self, job_id: str, sid: str) -> bool:
        """Records the Ray submission; False when the job ended meanwhile (the caller stops it)."""
        self.store.set_submission(job_id, sid)
        self.notifier.notify(job_id)
        return not self.is_terminal(job_id)

    # -- trajectories: the unit cache (service/unit_cache.py) -----------------------
    def plan_cache(self, rec: JobRecord) -> Any:
        """The cached units of a trajectory not yet submitted; None for other jobs or when the cache
        cannot be read (the job then computes every unit rather than not run at all)."""
        if rec.submission_id or not rec.spec.get("checkpoints"):
            return None
        from service import unit_cache

        try:
            cache = unit_cache.plan(self.store, rec.spec)
        except Exception:  # noqa: BLE001
            log.exception("the unit cache could not plan job %s; computing every unit", rec.id)
            cache = None
        self._cache_plans[rec.id] = cache
        return cache

    def answer_from_cache(self, rec: JobRecord, cache: Any) -> None:
        """Every unit of the trajectory is stored: the job succeeds with no driver and no workers."""
        from service import unit_cache

        result = unit_cache.answer(rec.spec, cache)
        prog = progress_mod.initial(rec.spec)
        progress_mod.apply(prog, {"type": "started", "checkpoints": [
            {"step": c["step"], "units": 0, "cached": c["cached_restrictions"]} for c in result["checkpoints"]]})
        self.store.set_progress(rec.id, progress_mod.finish(prog))
        self.store.transition(rec.id, JobState.SUCCEEDED, result=result)
        self._cache_plans.pop(rec.id, None)
        self.notifier.notify(rec.id)

    def driver_env(self, job_id: str) -> dict[str, str]:
        """Environment the driver needs from the cache plan (which units to skip)."""
        cache = self._cache_plans.get(job_id)
        return cache.env() if cache is not None else {}

    def _trajectory_result(self, rec: JobRecord, result: dict[str, Any]) -> dict[str, Any]:
        from service import unit_cache

        try:
            cache = self._cache_plans.pop(rec.id) if rec.id in self._cache_plans else unit_cache.plan(self.store, rec.spec)
            return unit_cache.complete_result(self.store, rec.id, rec.spec, result, cache)
        except Exception:  # the driver's result stands without the cache
            log.exception("merging the unit cache into job %s failed", rec.id)
            return result
