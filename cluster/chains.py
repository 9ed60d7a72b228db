"""Runs a job's (restriction, chain) units on a pool of chain workers, surviving worker loss.

The pool is the only place that talks to Ray about work: it starts the workers,
gates compute on the first worker having loaded everything (the preview), gets
L(w*) once per dataset, hands units to idle workers, and retries a unit whose
worker process died (a new worker replaces the dead one; Ray places it on any
node with room, so a lost node's chains move elsewhere). Retries are bounded per
unit; a unit that keeps failing is recorded as a failed chain and the others run on.

Cancellation (a set `stop` event) and the job deadline are checked at least
every `tick` seconds, so a stop request is answered within a second or two.
"""
from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import ray
from ray.exceptions import RayError, RayTaskError, UnserializableException

from cluster.errors import Cancelled, DeadlineExceeded, LLCError, Unavailable
from cluster.placement import ChainResources
from cluster.spec import JobSpec
from cluster.workers import ChainWorker, ProgressBoard, dataset_key

log = logging.getLogger(__name__)


class WorkerFailed(LLCError):
    """Unexpected exception inside a worker (a bug, or a resource error such as CUDA OOM)."""

    code = "INTERNAL"


@dataclass
class ChainUnit:
    restriction: int
    chain: int
    pilot: bool = False  # a calibration pilot: chain `chain` of the restriction's PilotPlan
    attempts: int = 0  # attempts started so far
    failures: list[str] = field(default_factory=list)  # why each failed attempt failed


@dataclass
class _Worker:
    handle: Any
    index: int
    placed: bool = False  # Ray found room for it and its process runs
    ready: bool = False  # it has loaded the model, data and restrictions
    busy: bool = False
    summary: dict[str, Any] | None = None
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


def _cause(exc: RayTaskError) -> BaseException:
    return getattr(exc, "cause", None) or exc


def _short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ChainPool:
    """A job's chain workers and the loop that feeds them units.

    Callbacks (all run on the driver's thread):
      on_ready(summary)            the first worker loaded model, data and restrictions
      on_progress(r, c, progress)  latest progress of chain c of restriction r
      on_chain(unit, status, chain_dict_or_None, message)   succeeded | diverged | retrying | failed
    """

    def __init__(self, spec: JobSpec, resources: ChainResources, size: int, *,
                 stop: threading.Event, deadline: float | None = None,
                 on_ready: Callable[[dict[str, Any]], None] = lambda s: None,
                 on_progress: Callable[[int, int, dict[str, Any]], None] = lambda r, c, p: None,
                 on_chain: Callable[[ChainUnit, str, dict[str, Any] | None, str], None] = lambda *a: None,
                 progress_interval: float = 1.0, tick: float = 0.25, placement_timeout: float = 300.0,
                 settings: dict[int, dict[str, Any]] | None = None,
                 calibrations: dict[int, dict[str, Any]] | None = None):
        self.spec = spec
        self.resources = resources
        self.size = size
        self.stop = stop
        self.deadline = deadline
        self.on_ready, self.on_progress, self.on_chain = on_ready, on_progress, on_chain
        self.progress_interval = progress_interval
        self.tick = tick
        self.placement_timeout = placement_timeout
        self._none_placed_since = time.monotonic()
        self.max_attempts = spec.compute.max_chain_retries + 1
        # Deaths of workers we tolerate in all (loading included) before giving up on the cluster.
        self.death_budget = size * self.max_attempts
        self.deaths = 0
        self.workers: list[_Worker] = []
        self.results: dict[tuple[int, int], dict[str, Any]] = {}
        self.init_losses: dict[str, float] = {}
        # Automatic settings (cluster.engine.calibrate), per restriction: the pilots' plan and
        # results, the calibration record, and the resolved sampler dict its main chains run with.
        self.plans: dict[int, Any] = {}
        self.pilot_results: dict[int, dict[int, dict[str, Any]]] = {}
        self.calibrations: dict[int, dict[str, Any]] = dict(calibrations or {})
        # Preset (a trajectory's checkpoints after the calibration one): no pilots are planned.
        self.settings: dict[int, dict[str, Any]] = dict(settings or {})
        self.summary: dict[str, Any] | None = None
        self.worker_summaries: list[dict[str, Any]] = []
        self._spec_json = spec.to_json()
        self._board = None
        self._inflight: dict[Any, tuple[str, _Worker, Any]] = {}
        self._next_index = 0

    # -- workers -------------------------------------------------------------
    def start(self) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # On the driver's node: losing a worker node must not take the job's progress with it.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self._board = ray.remote(ProgressBoard).options(num_cpus=0, scheduling_strategy=here).remote()
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> _Worker:
        group = None
        if self.resources.sharded:  # rank 0 of a ZeRO-3 group; it starts the other ranks
            from cluster.sharded import start_sharded_worker

            actor, group = start_sharded_worker(self.resources, self._spec_json, self._board)
        else:
            actor = ray.remote(ChainWorker).options(
                **self.resources.actor_options(), max_restarts=0, max_task_retries=0,
                name=None, namespace=None,
            ).remote(self._spec_json, self._board)
        w = _Worker(handle=actor, index=self._next_index, placement_group=group)
        self._next_index += 1
        self.workers.append(w)
        self._inflight[actor.where.remote()] = ("placed", w, None)  # answers once the process runs
        self._inflight[actor.prepare.remote()] = ("prepare", w, None)
        return w

    def _replace(self, dead: _Worker, why: str) -> None:
        self.deaths += 1
        self.workers.remove(dead)
        _kill(dead)
        for ref, (kind, w, payload) in list(self._inflight.items()):
            if w is dead and kind == "prepare":
                del self._inflight[ref]
        if self.deaths <= self.death_budget:
            log.warning("worker %d died (%s); starting a replacement", dead.index, why)
            self._spawn()
        elif not self.workers:
            raise Unavailable(
                f"{self.deaths} chain worker processes died (last: {why}); none is left. Check the Ray nodes' "
                "memory and health (each worker holds one copy of the model), or lower the number of chains per node"
            )

    def shutdown(self) -> None:
        """Kill every worker at once (frees its CPU/GPU and memory) and the progress board."""
        for w in self.workers:
            _kill(w)
        if self._board is not None:
            try:
                ray.kill(self._board, no_restart=True)
            except Exception:
                pass
        self.workers = []
        self._inflight.clear()

    # -- the loop ------------------------------------------------------------
    def run(self) -> dict[tuple[int, int], dict[str, Any]]:
        """Run every unit to a final status; returns chain dicts by (restriction, chain).

        Raises the first domain error of loading (before any chain runs), Cancelled,
        DeadlineExceeded or Unavailable; `self.results` holds what finished until then.
        """
        spec = self.spec
        keys = [dataset_key(r.dataset if r.dataset is not None else spec.dataset) for r in spec.restrictions]
        pending_losses = collections.deque(dict.fromkeys(keys))  # distinct, in order
        loss_attempts: dict[str, int] = collections.Counter()
        units = collections.deque(
            ChainUnit(r, c) for r in range(len(spec.restrictions)) for c in range(spec.sampler.chains)
        )
        total = len(units)
        drain_ref, last_drain = None, 0.0
        while len(self.results) < total:
            self._check_limits()
            # Hand work to idle, loaded workers: L(w*) first, then units whose L(w*) is known.
            for w in self.workers:
                if not (w.ready and not w.busy):
                    continue
                if pending_losses:
                    key = pending_losses.popleft()
                    loss_attempts[key] += 1
                    self._inflight[w.handle.init_loss.remote(key)] = ("init_loss", w, key)
                    w.busy = True
                    continue
                if self.summary is not None and not self.settings and not self.plans:
                    self._plan_settings(keys, units)
                unit = next((u for u in units if keys[u.restriction] in self.init_losses
                             and (u.pilot or u.restriction in self.settings)), None)
                if unit is None:
                    continue
                units.remove(unit)
                unit.attempts += 1
                sampler = (self.plans[unit.restriction].config_for(unit.chain).to_dict() if unit.pilot
                           else self.settings[unit.restriction])
                ref = w.handle.run_chain.remote(unit.restriction, unit.chain, unit.attempts,
                                                self.init_losses[keys[unit.restriction]], sampler, unit.pilot)
                self._inflight[ref] = ("chain", w, unit)
                w.busy = True
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
                    try:
                        for r, c, p in ray.get(ref):
                            if (r, c) not in self.results:
                                self.on_progress(r, c, p)
                    except RayError as exc:  # the board is only for progress: a lost update is harmless
                        log.warning("progress board unavailable: %s", _short(exc))
                    continue
                kind, w, payload = self._inflight.pop(ref)
                try:
                    value = ray.get(ref)
                except RayTaskError as exc:
                    self._worker_exception(kind, w, payload, _cause(exc), units, pending_losses, loss_attempts)
                    continue
                except UnserializableException as exc:  # the worker lives; only its exception did not unpickle
                    self._worker_exception(kind, w, payload, exc, units, pending_losses, loss_attempts)
                    continue
                except RayError as exc:  # the worker process or its node died
                    self._worker_died(kind, w, payload, _short(exc), units, pending_losses, loss_attempts)
                    continue
                self._finished(kind, w, payload, value)
        return self.results

    def _check_limits(self) -> None:
        if any(w.placed for w in self.workers):
            self._none_placed_since = time.monotonic()
        elif time.monotonic() - self._none_placed_since > self.placement_timeout:
            r = self.resources
            raise Unavailable(
                f"no chain worker could be placed for {self.placement_timeout:.0f} s: no Ray node has "
                f"{r.num_cpus:g} CPUs and {r.num_gpus:g} GPUs free (other jobs hold them, or nodes were lost); "
                "retry later, add nodes, or lower compute.cpus_per_chain / compute.gpus_per_chain"
            )
        if self.stop.is_set():
            raise Cancelled("the job was cancelled; its chains were stopped")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded(
                f"the job ran longer than compute.timeout_s={self.spec.compute.timeout_s:g} s and was stopped; "
                "raise compute.timeout_s, or lower chains, draws or the number of restrictions"
            )

    def _finished(self, kind: str, w: _Worker, payload: Any, value: Any) -> None:
        w.busy = False
        if kind == "placed":
            w.placed = True
            return
        if kind == "prepare":
            if self.summary is not None:  # every worker must hold the same checkpoint and data
                from cluster.hub import check_same_commits

                check_same_commits(self.summary, value)
            w.ready, w.summary = True, value
            self.worker_summaries.append(value)
            if self.summary is None:
                self.summary = value
                self.on_ready(value)
        elif kind == "init_loss":
            self.init_losses[payload] = value  # None in paired mode
        else:
            unit: ChainUnit = payload
            if unit.pilot:
                self._pilot_done(unit, value)
                return
            self.results[(unit.restriction, unit.chain)] = value
            self.on_chain(unit, value.get("status", "succeeded"), value, value.get("message", ""))

    # -- automatic settings: pilots first, then the main chains at the chosen ε ------
    def _plan_settings(self, keys: list[str], units: collections.deque) -> None:
        """nβ from each restriction's dataset size; pilot units (ahead of the queue) where ε or
        burn-in are "auto", else the resolved settings at once."""
        from cluster.engine.calibrate import plan_pilots, resolve, resolve_nbeta

        sampler = self.spec.sampler
        sizes = self.summary.get("sample_sizes", {})
        for r in range(len(self.spec.restrictions)):
            nbeta, info = resolve_nbeta(sampler, sizes.get(keys[r]))
            plan = plan_pilots(sampler, nbeta)
            self.calibrations[r] = {"nbeta": nbeta, "nbeta_rule": info, "warnings": list(info["warnings"])}
            if plan is None:
                self.settings[r] = resolve(sampler, nbeta, None).to_dict()
                continue
            self.plans[r] = plan
            self.pilot_results[r] = {}
            units.extendleft(ChainUnit(r, k, pilot=True) for k in reversed(range(len(plan.grid))))

    def _pilot_done(self, unit: ChainUnit, value: dict[str, Any]) -> None:
        from cluster.engine import ChainResult
        from cluster.engine.calibrate import choose, resolve

        r = unit.restriction
        self.pilot_results[r][unit.chain] = value
        plan = self.plans[r]
        if len(self.pilot_results[r]) < len(plan.grid):
            return
        chains = [ChainResult.from_dict(c) for c in self.pilot_results[r].values()]
        record = choose(plan, chains, self.init_losses.get(dataset_key(
            self.spec.restrictions[r].dataset or self.spec.dataset)))
        base = self.calibrations[r]
        self.calibrations[r] = {**record, **base, "warnings": base["warnings"] + record["warnings"]}
        self.settings[r] = resolve(self.spec.sampler, plan.nbeta, record).to_dict()
        log.info("restriction %d calibrated: ε = %.3g, burn-in %d (%s)", r, record["step_size"], record["burn_in"],
                 record["step_size_reason"])

    def _worker_exception(self, kind: str, w: _Worker, payload: Any, cause: BaseException,
                          units: collections.deque, pending_losses: collections.deque,
                          loss_attempts: collections.Counter) -> None:
        w.busy = False
        if isinstance(cause, LLCError):
            raise cause  # a problem with the request (model, data, restriction): retrying cannot help
        message = f"{type(cause).__name__}: {_short(cause)}"
        if kind in ("placed", "prepare"):
            raise WorkerFailed(f"loading the model and data failed on a worker: {message}")
        if kind == "init_loss":
            if loss_attempts[payload] >= self.max_attempts:
                raise WorkerFailed(f"computing L(w*) failed {loss_attempts[payload]} times: {message}")
            pending_losses.appendleft(payload)
            return
        self._unit_failed(payload, message, units)

    def _worker_died(self, kind: str, w: _Worker, payload: Any, why: str, units: collections.deque,
                     pending_losses: collections.deque, loss_attempts: collections.Counter) -> None:
        # Every call queued on the dead worker fails too; requeue its work once, here.
        for ref, (k, other, p) in list(self._inflight.items()):
            if other is w:
                del self._inflight[ref]
        self._replace(w, why)
        if kind == "init_loss":
            if loss_attempts[payload] >= self.max_attempts:
                raise Unavailable(f"workers died {loss_attempts[payload]} times while computing L(w*): {why}")
            pending_losses.appendleft(payload)
        elif kind == "chain":
            self._unit_failed(payload, f"worker process died: {why}", units)

    def _unit_failed(self, unit: ChainUnit, message: str, units: collections.deque) -> None:
        unit.failures.append(message)
        if unit.attempts < self.max_attempts:
            units.appendleft(unit)  # first in line, so a retried chain does not wait behind the queue
            if not unit.pilot:
                self.on_chain(unit, "retrying", None, f"attempt {unit.attempts} failed ({message}); retrying")
            return
        from cluster.engine.estimate import chain_seed  # torch, only once a chain has failed for good

        chain = {
            "chain": unit.chain, "seed": chain_seed(self.spec.sampler.seed, unit.chain), "llc": math.nan, "status": "failed", "loss_trace": [],
            "init_trace": [], "mala_acceptance": None, "frac_below_init": None, "steps": 0,
            "message": f"failed {unit.attempts} times; last: {message}", "attempts": unit.attempts,
            "extra": {"failures": list(unit.failures)},
        }
        if unit.pilot:  # a pilot that failed for good is a row of the calibration, not a chain of the result
            self._pilot_done(unit, chain)
            return
        self.results[(unit.restriction, unit.chain)] = chain
        self.on_chain(unit, "failed", chain, chain["message"])
