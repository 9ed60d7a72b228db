"""Runs estimates as Ray jobs: the Ray jobs adapter (submit, follow the log, stop).

Each estimate is one Ray job (`submission_id = llc-<job_id>`, entrypoint
`<python> -m cluster.driver`, spec in the env var LLC_JOB_SPEC). The runner follows
the job's log stream (push), parses `LLC_EVENT` lines and hands them to the
`JobTracker` (service/tracker.py), which stores them once by seq and moves the job
through its states; every store call runs off the event loop. Ray keeps the job and
its log when the front end stops; a new runner re-reads the log of every unfinished
job (`resume`).
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
from service.notify import JobNotifier
from service.states import JobState
from service.store import JobRecord, JobStore
from service.tracker import JobTracker

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
        self.tracker = JobTracker(store, notifier)
        self._client: Any = None
        self._tasks: dict[str, asyncio.Task] = {}

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
                await asyncio.to_thread(lambda: self._connect().stop_job(rec.submission_id))
            except Unavailable:
                raise
            except Exception as exc:  # the job already ended or was never created: nothing to stop
                log.info("stop_job(%s): %s", rec.submission_id, exc)
        done, landed = await asyncio.to_thread(self.tracker.cancel, rec, reason)
        if landed:  # the submission landed between our read and the transition: stop it too
            await asyncio.to_thread(self._stop_quietly, landed)
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
        tracker = self.tracker
        try:
            rec = await asyncio.to_thread(self.store.get, job_id)
            if rec is None or rec.state.is_terminal:
                return
            cache = await asyncio.to_thread(tracker.plan_cache, rec)  # a trajectory: ask the unit cache first
            if cache is not None and cache.complete:  # every unit is stored: no driver, no workers
                await asyncio.to_thread(tracker.answer_from_cache, rec, cache)
                return
            sid = rec.submission_id or await self._submit(rec)
            if sid:
                await self._follow(job_id, sid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a lost cluster: the job must not hang in QUEUED/RUNNING
            log.exception("following job %s failed", job_id)
            await asyncio.to_thread(
                tracker.finish, job_id, JobState.FAILED, code="UNAVAILABLE" if isinstance(exc, Unavailable) else "INTERNAL",
                message=f"the front end lost this estimate: {exc}")

    async def _submit(self, rec: JobRecord) -> str:
        sid = submission_id(rec.id)
        env = {**self.config.env_vars, "LLC_JOB_SPEC": rec.spec_json, **self.tracker.driver_env(rec.id)}
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
                    await asyncio.to_thread(self.tracker.finish, rec.id, JobState.FAILED, code="UNAVAILABLE",
                                            message=exc.message)
                    return ""
                await asyncio.sleep(1.0)
            except RuntimeError as exc:
                # Submitted before a restart, but the id was not stored yet: follow that job.
                if "already" not in str(exc):
                    raise
        if not await asyncio.to_thread(self.tracker.submitted, rec.id, sid):
            await asyncio.to_thread(self._stop_quietly, sid)  # cancelled while the submission was in flight
            return ""
        return sid

    def _stop_quietly(self, sid: str) -> None:
        try:
            self._connect().stop_job(sid)
        except Exception as exc:  # noqa: BLE001 (already ended)
            log.info("stop_job(%s): %s", sid, exc)

    async def _follow(self, job_id: str, sid: str) -> None:
        tracker = self.tracker
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
                    if await asyncio.to_thread(tracker.ingest, job_id, parse_lines(buffer.feed(chunk))):
                        return
                await asyncio.to_thread(tracker.ingest, job_id, parse_lines(buffer.flush()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the stream broke (dashboard restart, network): re-read below
                log.warning("log stream of %s broke: %s", sid, exc)
            if await asyncio.to_thread(tracker.is_terminal, job_id):
                return
            try:
                info = await asyncio.to_thread(client.get_job_info, sid)
            except RuntimeError as exc:  # the job API's 404: this cluster never had the job, or lost it
                if "does not exist" not in str(exc):
                    raise
                await asyncio.to_thread(tracker.finish, job_id, JobState.FAILED, code="UNAVAILABLE",
                                        message=JOB_GONE.format(sid=sid))
                return
            status = str(getattr(info.status, "value", info.status))
            if status in RAY_TERMINAL:
                logs = await asyncio.to_thread(client.get_job_logs, sid)
                await asyncio.to_thread(tracker.ray_job_ended, job_id, sid, status, info.message or "", logs,
                                        self.config.log_lines_in_errors)
                return
            await asyncio.sleep(1.0)  # still running: the stream ended early; follow it again (dedup by seq)
