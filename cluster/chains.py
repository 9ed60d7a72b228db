"""Carries out a job's chain schedule on Ray: the thin executor of `cluster.scheduling`.

The pool starts the workers (a new one replaces a dead one; Ray places it on any node with
room, so a lost node's chains move elsewhere), turns every Ray reply into an event for the
`ChainScheduler` (placed, loaded, returned, raised, died) and sends each idle worker the work
the scheduler picks. Cancellation (a set `stop` event) and the job deadline are checked at
least every `tick` seconds, so a stop request is answered within a second or two.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import ray
from ray.exceptions import RayError, RayTaskError, UnserializableException

from cluster.contract.errors import Unavailable
from cluster.contract.spec import JobSpec
from cluster.placement import ChainResources
from cluster.scheduling import ChainReport, ChainScheduler, InitLoss, RunChains
from cluster.workers import ChainWorker, ProgressBoard, dataset_key

log = logging.getLogger(__name__)


@dataclass
class _Worker:
    handle: Any
    index: int
    placement_group: Any = None  # a sharded chain's STRICT_PACK group, removed with the worker


def _kill(w: _Worker) -> None:
    """Kill a worker (a sharded one's other ranks die with it) and free its placement group."""
    try:
        ray.kill(w.handle, no_restart=True)
    except Exception:  # already gone with its node
        pass
    if w.placement_group is not None:
        from ray.util import remove_placement_group

        remove_placement_group(w.placement_group)


def _short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ChainPool:
    """A job's chain workers and the loop that feeds them what the scheduler decides.

    Callbacks (all run on the driver's thread):
      on_ready(summary)            the first worker loaded model, data and restrictions
      on_progress(r, c, progress)  latest progress of chain c of restriction r
      on_chain(report)             a ChainReport: succeeded | diverged | retrying | failed
    """

    def __init__(self, spec: JobSpec, resources: ChainResources, size: int, *,
                 stop: threading.Event, deadline: float | None = None,
                 on_ready: Callable[[dict[str, Any]], None] = lambda s: None,
                 on_progress: Callable[[int, int, dict[str, Any]], None] = lambda r, c, p: None,
                 on_chain: Callable[[ChainReport], None] = lambda report: None,
                 progress_interval: float = 1.0, tick: float = 0.25, placement_timeout: float = 300.0,
                 settings: dict[int, dict[str, Any]] | None = None,
                 calibrations: dict[int, dict[str, Any]] | None = None):
        self.spec = spec
        self.resources = resources
        self.size = size
        self.stop = stop
        self.on_ready, self.on_progress, self.on_chain = on_ready, on_progress, on_chain
        self.progress_interval = progress_interval
        self.tick = tick
        keys = [dataset_key(r.dataset if r.dataset is not None else spec.dataset) for r in spec.restrictions]
        self.schedule = ChainScheduler(spec, keys, workers=size, now=time.monotonic(), deadline=deadline,
                                       placement_timeout=placement_timeout,
                                       settings=settings, calibrations=calibrations)
        self.workers: dict[int, _Worker] = {}
        self._spec_ref: Any = None  # the parsed spec, put in Ray's object store once for every worker
        self._board = None
        self._inflight: dict[Any, tuple[str, _Worker]] = {}  # Ray reference -> (what it answers, worker)
        self._next_index = 0

    # What the driver reads off the schedule for the result document.
    results = property(lambda self: self.schedule.results)
    init_losses = property(lambda self: self.schedule.init_losses)
    summary = property(lambda self: self.schedule.summary)
    worker_summaries = property(lambda self: self.schedule.worker_summaries)
    settings = property(lambda self: self.schedule.settings)
    calibrations = property(lambda self: self.schedule.calibrations)

    # -- workers -------------------------------------------------------------
    def start(self) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # On the driver's node: losing a worker node must not take the job's progress with it.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self._board = ray.remote(ProgressBoard).options(num_cpus=0, scheduling_strategy=here).remote()
        self._spec_ref = ray.put(self.spec)
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        group = None
        if self.resources.sharded:  # rank 0 of a ZeRO-3 group; it starts the other ranks
            from cluster.sharded import start_sharded_worker

            actor, group = start_sharded_worker(self.resources, self._spec_ref, self._board)
        else:
            actor = ray.remote(ChainWorker).options(
                **self.resources.actor_options(), max_restarts=0, max_task_retries=0,
                name=None, namespace=None,
            ).remote(self._spec_ref, self._board)
        w = _Worker(handle=actor, index=self._next_index, placement_group=group)
        self._next_index += 1
        self.workers[w.index] = w
        self.schedule.worker_started(w.index)
        self._inflight[actor.where.remote()] = ("placed", w)  # answers once the process runs
        self._inflight[actor.prepare.remote()] = ("prepare", w)

    def shutdown(self) -> None:
        """Kill every worker at once (frees its CPU/GPU and memory) and the progress board."""
        for w in self.workers.values():
            _kill(w)
        if self._board is not None:
            try:
                ray.kill(self._board, no_restart=True)
            except Exception:
                pass
        self.workers = {}
        self._inflight.clear()

    # -- the loop ------------------------------------------------------------
    def run(self) -> dict[tuple[int, int], dict[str, Any]]:
        """Run every unit to a final status; returns chain dicts by (restriction, chain).

        Raises the first domain error of loading (before any chain runs), Cancelled,
        DeadlineExceeded or Unavailable; `self.results` holds what finished until then.
        """
        schedule = self.schedule
        drain_ref, last_drain = None, 0.0
        while not schedule.done:
            schedule.check(time.monotonic(), self.stop.is_set())
            for w in list(self.workers.values()):
                work = schedule.next_work(w.index)
                if isinstance(work, InitLoss):
                    self._inflight[w.handle.init_loss.remote(work.key)] = ("work", w)
                elif isinstance(work, RunChains):
                    self._inflight[w.handle.run_chains.remote(
                        work.restriction, [u.chain for u in work.units], [u.attempts for u in work.units],
                        work.init_loss, work.sampler, work.pilot)] = ("work", w)
            now = time.monotonic()
            if drain_ref is None and now - last_drain >= self.progress_interval and self._board is not None:
                drain_ref, last_drain = self._board.drain.remote(), now
            waiting = list(self._inflight) + ([drain_ref] if drain_ref is not None else [])
            if not waiting:
                raise Unavailable("no chain worker is left to run the remaining chains; check the Ray cluster's nodes")
            done, _ = ray.wait(waiting, num_returns=1, timeout=self.tick)
            for ref in done:
                if drain_ref is not None and ref == drain_ref:
                    drain_ref = None
                    self._drain(ref)
                    continue
                kind, w = self._inflight.pop(ref)
                try:
                    value = ray.get(ref)
                except (RayTaskError, UnserializableException) as exc:  # raised inside the worker, which lives on
                    # (an UnserializableException: only the worker's exception did not unpickle)
                    cause = getattr(exc, "cause", None) or exc
                    self._report(schedule.raised(w.index, cause, f"{type(cause).__name__}: {_short(cause)}",
                                                 loading=kind != "work"))
                    continue
                except RayError as exc:  # the worker process or its node died
                    self._died(w, _short(exc))
                    continue
                self._returned(kind, w, value)
        return self.results

    def _drain(self, ref: Any) -> None:
        try:
            for r, c, p in ray.get(ref):
                if not self.schedule.finished(r, c):
                    self.on_progress(r, c, p)
        except RayError as exc:  # the board is only for progress: a lost update is harmless
            log.warning("progress board unavailable: %s", _short(exc))

    def _returned(self, kind: str, w: _Worker, value: Any) -> None:
        if kind == "placed":
            self.schedule.worker_placed(w.index)
        elif kind == "prepare":
            if self.schedule.worker_ready(w.index, value):
                self.on_ready(value)
        else:
            self._report(self.schedule.done_with(w.index, value))

    def _died(self, dead: _Worker, why: str) -> None:
        # Every call queued on the dead worker fails too: forget them; the schedule requeues its work once.
        for ref, (_, other) in list(self._inflight.items()):
            if other is dead:
                del self._inflight[ref]
        del self.workers[dead.index]
        _kill(dead)
        replace, reports = self.schedule.worker_died(dead.index, why)
        if replace:
            log.warning("worker %d died (%s); starting a replacement", dead.index, why)
            self._spawn()
        self._report(reports)

    def _report(self, reports: list[ChainReport]) -> None:
        for report in reports:
            self.on_chain(report)
