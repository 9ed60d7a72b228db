"""Runs estimates as Ray jobs: submit, follow the job's log for events, store them, finish.

Each estimate is one Ray job (`submission_id = llc-<job_id>`, entrypoint
`<python> -m cluster.driver`, spec in the env var LLC_JOB_SPEC). The runner follows
the job's log stream (push), parses `LLC_EVENT` lines, stores each event once by seq
and moves the job through its states. Ray keeps the job and its log when the front
end stops; a new runner re-reads the log of every unfinished job (`resume`).
"""
from __future__ import annotations

import asyncio
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from cluster.contract.errors import LLCError, Unavailable, reported
from cluster.contract.events import parse_lines
from service import progress as progress_mod
from service.notify import JobNotifier
from service.states import JobState
from service.store import JobRecord, JobStore

log = logging.getLogger(__name__)
RAY_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
JOB_GONE = ("the Ray cluster no longer has this estimate's job {sid}: the cluster was stopped or replaced while it "
            "ran (for the embedded default: its local Ray was stopped, e.g. by a reboot); submit the estimate again")


@dataclass
class RunnerConfig:
    dashboard_url: str  # Ray's job API, e.g. http://127.0.0.1:8265
    python: str = sys.executable  # the interpreter that runs `-m cluster.driver` on the head node
    entrypoint_num_cpus: float = 0.0  # the driver only orchestrates; chains reserve their own resources
    env_vars: dict[str, str] = field(default_factory=dict)  # extra environment for the driver
    submit_retry_s: float = 30.0  # how long to retry a submission while Ray is unreachable
    log_lines_in_errors: int = 20


class LineBuffer:
    """Whole lines from a stream of chunks: a log chunk may end inside a line (a long event)."""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, chunk: str) -> list[str]:
        lines = (self._pending + chunk).split("\n")
        self._pending = lines.pop()
        return lines

    def flush(self) -> list[str]:
        rest, self._pending = self._pending, ""
        return [rest] if rest else []


def submission_id(job_id: str) -> str:
    return f"llc-{job_id}"


class RayJobRunner:
    def __init__(self, store: JobStore, config: RunnerConfig, notifier: JobNotifier):
        self.store, self.config, self.notifier = store, config, notifier
        self._client: Any = None
        self._tasks: dict[str, asyncio.Task] = {}
        self._cache_plans: dict[str, Any] = {}  # job id -> service.unit_cache.CachePlan (trajectories)

    # -------------------------------------------------------------- Ray connection
    def _connect(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient  # heavy; only the runner needs it

            try:
                self._client = JobSubmissionClient(self.config.dashboard_url)
            except Exception as exc:  # ConnectionError, RuntimeError: the job API is not answering
                raise Unavailable(f"the Ray job API at {self.config.dashboard_url} is not reachable ({exc}); start "
                                  "the cluster or point the server at it with --ray-dashboard") from None
        return self._client

    def _entrypoint(self) -> str:
        return f"{shlex.quote(self.config.python)} -m cluster.driver"

    async def ensure_available(self) -> None:
        """Raises Unavailable if Ray's job API does not answer (checked before a job is stored)."""
        await asyncio.to_thread(self._connect)

    # -------------------------------------------------------------- lifecycle
    def start(self, job_id: str) -> None:
        if job_id not in self._tasks:
            task = asyncio.get_running_loop().create_task(self._run(job_id), name=f"llc-job-{job_id}")
            self._tasks[job_id] = task
            task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    def resume(self) -> list[str]:
        """Follows every unfinished job in the store (called when the front end starts)."""
        ids = [rec.id for rec in self.store.active()]
        for job_id in ids:
            self.start(job_id)
        return ids

    async def close(self) -> None:
        """Stops following; the Ray jobs keep running for the next front end."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def cancel(self, rec: JobRecord, reason: str) -> JobRecord | None:
        if rec.submission_id:
            try:
                await asyncio.to_thread(self._connect().stop_job, rec.submission_id)
            except Unavailable:
                raise
            except Exception as exc:  # the job already ended or was never created: nothing to stop
                log.info("stop_job(%s): %s", rec.submission_id, exc)
        done = self.store.transition(rec.id, JobState.CANCELLED, error_code="CANCELLED", error_message=reason)
        self.notifier.notify(rec.id)
        later = self.store.get(rec.id)
        if done is not None and later is not None and later.submission_id and not rec.submission_id:
            # The submission landed between our read and the transition: stop it too.
            await asyncio.to_thread(self._stop_quietly, later.submission_id)
        return done

    # -------------------------------------------------------------- preview
    async def preview(self, spec_json: str, preview_id: str) -> list[dict[str, Any]]:
        """Runs the driver just long enough to report which weights each restriction moves
        (its `preview` event), then stops it. Nothing is stored."""
        client = await asyncio.to_thread(self._connect)
        sid = f"llc-preview-{preview_id}"
        submitted = asyncio.ensure_future(asyncio.to_thread(
            client.submit_job, entrypoint=self._entrypoint(), submission_id=sid,
            runtime_env={"env_vars": {**self.config.env_vars, "LLC_JOB_SPEC": spec_json}},
            entrypoint_num_cpus=self.config.entrypoint_num_cpus or None))
        buffer, last_lines = LineBuffer(), []
        try:
            await asyncio.shield(submitted)  # a deadline may cancel this wait, never the submission
            async for chunk in client.tail_job_logs(sid):
                lines = buffer.feed(chunk)
                last_lines = (last_lines + lines)[-self.config.log_lines_in_errors:]
                for event in parse_lines(lines):
                    if event.get("type") == "preview":
                        return list(event.get("restrictions") or [])
                    if event.get("type") == "error":
                        raise reported(str(event.get("code") or "INTERNAL"), str(event.get("message") or ""),
                                       str(event.get("field") or ""))
            raise LLCError("the driver ended without a preview; last log lines:\n" + "\n".join(last_lines))
        finally:
            if submitted.done():
                await asyncio.to_thread(self._stop_quietly, sid)
            else:  # cancelled (the server's preview deadline) mid-submission: stop the job once it exists
                loop = asyncio.get_running_loop()
                submitted.add_done_callback(lambda _: loop.run_in_executor(None, self._stop_quietly, sid))

    # -------------------------------------------------------------- one job
    async def _run(self, job_id: str) -> None:
        try:
            rec = self.store.get(job_id)
            if rec is None or rec.state.is_terminal:
                return
            if not rec.submission_id and rec.spec.get("checkpoints"):  # a trajectory: ask the unit cache first
                from service import unit_cache

                try:
                    cache = await asyncio.to_thread(unit_cache.plan, self.store, rec.spec)
                except Exception:  # noqa: BLE001 (the job runs without the cache rather than not at all)
                    log.exception("the unit cache could not plan job %s; computing every unit", job_id)
                    cache = None
                self._cache_plans[job_id] = cache
                if cache is not None and cache.complete:  # every unit is stored: no driver, no workers
                    self._answer_from_cache(rec, cache)
                    return
            sid = rec.submission_id or await self._submit(rec)
            if sid:
                await self._follow(job_id, sid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a lost cluster: the job must not hang in QUEUED/RUNNING
            log.exception("following job %s failed", job_id)
            self._finish(job_id, JobState.FAILED, code="UNAVAILABLE" if isinstance(exc, Unavailable) else "INTERNAL",
                         message=f"the front end lost this estimate: {exc}")

    async def _submit(self, rec: JobRecord) -> str:
        sid = submission_id(rec.id)
        cache = self._cache_plans.get(rec.id)
        env = {**self.config.env_vars, "LLC_JOB_SPEC": rec.spec_json, **(cache.env() if cache is not None else {})}
        deadline = time.monotonic() + self.config.submit_retry_s
        while True:
            try:
                client = await asyncio.to_thread(self._connect)
                await asyncio.to_thread(client.submit_job, entrypoint=self._entrypoint(), submission_id=sid,
                                        runtime_env={"env_vars": env},
                                        entrypoint_num_cpus=self.config.entrypoint_num_cpus or None,
                                        metadata={"llc_job_id": rec.id, "llc_owner": rec.owner})
                break
            except Unavailable as exc:
                if time.monotonic() > deadline:
                    self._finish(rec.id, JobState.FAILED, code="UNAVAILABLE", message=exc.message)
                    return ""
                await asyncio.sleep(1.0)
            except RuntimeError as exc:
                # Submitted before a restart, but the id was not stored yet: follow that job.
                if "already" not in str(exc):
                    raise
        self.store.set_submission(rec.id, sid)
        self.notifier.notify(rec.id)
        if self._terminal(rec.id):  # cancelled while the submission was in flight: stop what we started
            await asyncio.to_thread(self._stop_quietly, sid)
            return ""
        return sid

    def _stop_quietly(self, sid: str) -> None:
        try:
            self._connect().stop_job(sid)
        except Exception as exc:  # noqa: BLE001 (already ended)
            log.info("stop_job(%s): %s", sid, exc)

    async def _follow(self, job_id: str, sid: str) -> None:
        while True:
            try:
                client = await asyncio.to_thread(self._connect)
                break
            except Unavailable as exc:  # Ray restarting or briefly unreachable: the job lives there, keep trying
                log.warning("cannot follow %s yet: %s", sid, exc.message)
                await asyncio.sleep(5.0)
        while True:
            buffer = LineBuffer()
            try:
                async for chunk in client.tail_job_logs(sid):
                    self._ingest(job_id, parse_lines(buffer.feed(chunk)))
                    if self._terminal(job_id):
                        return
                self._ingest(job_id, parse_lines(buffer.flush()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the stream broke (dashboard restart, network): re-read below
                log.warning("log stream of %s broke: %s", sid, exc)
            if self._terminal(job_id):
                return
            try:
                info = await asyncio.to_thread(client.get_job_info, sid)
            except RuntimeError as exc:  # the job API's 404: this cluster never had the job, or lost it
                if "does not exist" not in str(exc):
                    raise
                self._finish(job_id, JobState.FAILED, code="UNAVAILABLE", message=JOB_GONE.format(sid=sid))
                return
            status = str(getattr(info.status, "value", info.status))
            if status in RAY_TERMINAL:
                await self._finish_from_ray(job_id, sid, status, info.message or "")
                return
            await asyncio.sleep(1.0)  # still running: the stream ended early; follow it again (dedup by seq)

    def _terminal(self, job_id: str) -> bool:
        rec = self.store.get(job_id)
        return rec is None or rec.state.is_terminal

    async def _finish_from_ray(self, job_id: str, sid: str, status: str, ray_message: str) -> None:
        """The Ray job ended; read its whole log once more in case the stream missed the end."""
        logs = await asyncio.to_thread(self._connect().get_job_logs, sid)
        self._ingest(job_id, parse_lines(logs.splitlines()))
        if self._terminal(job_id):
            return
        tail = "\n".join(logs.rstrip().splitlines()[-self.config.log_lines_in_errors:])
        if status == "STOPPED":
            self._finish(job_id, JobState.CANCELLED, code="CANCELLED",
                         message=f"the Ray job {sid} was stopped outside this service")
        elif status == "SUCCEEDED":
            self._finish(job_id, JobState.FAILED, code="INTERNAL",
                         message=f"the driver exited without a result; last log lines:\n{tail}")
        else:
            self._finish(job_id, JobState.FAILED, code="INTERNAL",
                         message=f"the driver failed ({ray_message.strip()}); last log lines:\n{tail}")

    def _ingest(self, job_id: str, events) -> None:
        events = [e for e in events if isinstance(e, dict) and isinstance(e.get("seq"), int)]
        if not events:
            return
        new = self.store.add_events(job_id, events)
        if not new:
            return
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

    def _answer_from_cache(self, rec: JobRecord, cache: Any) -> None:
        from service import unit_cache

        result = unit_cache.answer(rec.spec, cache)
        prog = progress_mod.initial(rec.spec)
        progress_mod.apply(prog, {"type": "started", "checkpoints": [
            {"step": c["step"], "units": 0, "cached": c["cached_restrictions"]} for c in result["checkpoints"]]})
        self.store.set_progress(rec.id, progress_mod.finish(prog))
        self.store.transition(rec.id, JobState.SUCCEEDED, result=result)
        self._cache_plans.pop(rec.id, None)
        self.notifier.notify(rec.id)

    def _trajectory_result(self, rec: JobRecord, result: dict[str, Any]) -> dict[str, Any]:
        from service import unit_cache

        try:
            cache = self._cache_plans.pop(rec.id) if rec.id in self._cache_plans else unit_cache.plan(self.store, rec.spec)
            return unit_cache.complete_result(self.store, rec.id, rec.spec, result, cache)
        except Exception:  # the driver's result stands without the cache
            log.exception("merging the unit cache into job %s failed", rec.id)
            return result

    def _finish(self, job_id: str, state: JobState, *, code: str, message: str) -> None:
        self.store.transition(job_id, state, error_code=code, error_message=message)
        self.notifier.notify(job_id)
