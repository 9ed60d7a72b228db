"""What a job's chain workers do next, decided from plain events: the policy, with no Ray in it.

`ChainScheduler` knows the job's (restriction, chain) units, which workers are placed, loaded
and busy, and the budgets; `cluster/chains.py` turns Ray replies into calls here and carries
out what they return. The rules:

- compute is gated on a worker having loaded everything (its summary is the job's preview);
- L(w*) is computed once per distinct dataset, before any chain of a restriction on it;
- with automatic settings, a restriction's calibration pilots run first (as ordinary units,
  on every worker), then its main chains at the settings the pilots chose;
- a unit whose attempt failed or whose worker died goes back to the head of the queue, up to
  `compute.max_chain_retries + 1` attempts, then is recorded as a failed chain; the others run on;
- a request error raised in a worker (an `LLCError`) ends the job at once: retrying cannot help;
- worker deaths are bounded in all (workers × attempts); placement, cancellation and the
  deadline are checked on every `check(now, cancelled)`.
"""
from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Union

from cluster.contract.errors import Cancelled, DeadlineExceeded, LLCError, Unavailable
from cluster.contract.spec import JobSpec
from cluster.engine import calibrate
from cluster.engine.result import ChainResult
from cluster.engine.seeds import chain_seed

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


@dataclass(frozen=True)
class InitLoss:
    """Compute L(w*) over the dataset `key`."""

    key: str


@dataclass(frozen=True)
class RunChains:
    """Run `units` (chains of one restriction, one batched computation when several) at `sampler`."""

    restriction: int
    units: tuple[ChainUnit, ...]
    init_loss: float | None
    sampler: dict[str, Any]
    pilot: bool


Work = Union[InitLoss, RunChains]


@dataclass(frozen=True)
class ChainReport:
    """A chain's new status for the job's events: succeeded | diverged | retrying | failed."""

    unit: ChainUnit
    status: str
    chain: dict[str, Any] | None
    message: str


@dataclass
class WorkerState:
    placed: bool = False  # Ray found room for it and its process runs
    ready: bool = False  # it has loaded the model, data and restrictions
    work: Work | None = None  # what it is doing now


class ChainScheduler:
    def __init__(self, spec: JobSpec, dataset_keys: list[str], *, workers: int, now: float,
                 deadline: float | None = None, placement_timeout: float = 300.0,
                 settings: dict[int, dict[str, Any]] | None = None,
                 calibrations: dict[int, dict[str, Any]] | None = None):
        """`dataset_keys[r]`: restriction r's dataset; `workers`: the pool's size; `settings`: sampler
        dicts resolved elsewhere (a trajectory's later checkpoints), so no pilots are planned."""
        self.spec = spec
        self.keys = dataset_keys
        self.deadline = deadline
        self.placement_timeout = placement_timeout
        self.chains_per_worker = spec.compute.chains_per_worker
        self.max_attempts = spec.compute.max_chain_retries + 1
        # Deaths of workers we tolerate in all (loading included) before giving up on the cluster.
        self.death_budget = workers * self.max_attempts
        self.deaths = 0
        self.workers: dict[int, WorkerState] = {}
        self.units = collections.deque(
            ChainUnit(r, c) for r in range(len(spec.restrictions)) for c in range(spec.sampler.chains))
        self.total = len(self.units)
        self.pending_losses = collections.deque(dict.fromkeys(dataset_keys))  # distinct, in order
        self.loss_attempts: collections.Counter[str] = collections.Counter()
        self.init_losses: dict[str, float | None] = {}
        self.results: dict[tuple[int, int], dict[str, Any]] = {}
        self.summary: dict[str, Any] | None = None  # the first loaded worker's: the job's preview
        self.worker_summaries: list[dict[str, Any]] = []
        # Automatic settings (cluster.engine.calibrate), per restriction: the pilots' plan and results,
        # the calibration record, and the resolved sampler dict its main chains run with.
        self.plans: dict[int, calibrate.PilotPlan] = {}
        self.pilot_results: dict[int, dict[int, dict[str, Any]]] = {}
        self.calibrations: dict[int, dict[str, Any]] = dict(calibrations or {})
        self.settings: dict[int, dict[str, Any]] = dict(settings or {})
        self._planned = bool(self.settings)
        self._none_placed_since = now

    @property
    def done(self) -> bool:
        return len(self.results) >= self.total

    def finished(self, restriction: int, chain: int) -> bool:
        return (restriction, chain) in self.results

    # -- workers ---------------------------------------------------------------
    def worker_started(self, worker: int) -> None:
        self.workers[worker] = WorkerState()

    def worker_placed(self, worker: int) -> None:
        self.workers[worker].placed = True

    def worker_ready(self, worker: int, summary: dict[str, Any]) -> bool:
        """A worker loaded model, data and restrictions; True for the first (its summary is the preview)."""
        if self.summary is not None:  # every worker must hold the same checkpoint and data
            from cluster.hub import check_same_commits

            check_same_commits(self.summary, summary)
        self.workers[worker].ready = True
        self.worker_summaries.append(summary)
        first = self.summary is None
        if first:
            self.summary = summary
        return first

    def worker_died(self, worker: int, why: str) -> tuple[bool, list[ChainReport]]:
        """A worker's process or node died; its work goes back in the queue. Returns (start a
        replacement?, chain reports); raises Unavailable when nothing is left to run on."""
        state = self.workers.pop(worker)
        self.deaths += 1
        replace = self.deaths <= self.death_budget
        if not replace and not self.workers:
            raise Unavailable(
                f"{self.deaths} chain worker processes died (last: {why}); none is left. Check the Ray nodes' "
                "memory and health (each worker holds one copy of the model), or lower the number of chains per node")
        reports: list[ChainReport] = []
        if isinstance(state.work, InitLoss):
            key = state.work.key
            if self.loss_attempts[key] >= self.max_attempts:
                raise Unavailable(f"workers died {self.loss_attempts[key]} times while computing L(w*): {why}")
            self.pending_losses.appendleft(key)
        elif isinstance(state.work, RunChains):
            reports = self._units_failed(state.work, f"worker process died: {why}")
        return replace, reports

    # -- work ----------------------------------------------------------------------
    def next_work(self, worker: int) -> Work | None:
        """Work for an idle, loaded worker (it is busy with it until `done`/`failed`), or None."""
        state = self.workers[worker]
        if not state.ready or state.work is not None:
            return None
        if self.pending_losses:
            key = self.pending_losses.popleft()
            self.loss_attempts[key] += 1
            state.work = InitLoss(key)
            return state.work
        if self.summary is not None and not self._planned:
            self._plan_settings()
        unit = next((u for u in self.units if self._runnable(u)), None)
        if unit is None:
            return None
        group = [unit]
        if not unit.pilot:  # main chains of one restriction share their settings: batch them
            group += [u for u in self.units if u is not unit and not u.pilot and u.restriction == unit.restriction
                      ][: self.chains_per_worker - 1]
        for u in group:
            self.units.remove(u)
            u.attempts += 1
        r = unit.restriction
        sampler = self.plans[r].config_for(unit.chain).to_dict() if unit.pilot else self.settings[r]
        state.work = RunChains(r, tuple(group), self.init_losses[self.keys[r]], sampler, unit.pilot)
        return state.work

    def _runnable(self, unit: ChainUnit) -> bool:
        return self.keys[unit.restriction] in self.init_losses and (unit.pilot or unit.restriction in self.settings)

    def done_with(self, worker: int, value: Any) -> list[ChainReport]:
        """The worker's work returned `value`: L(w*), or one chain dict per unit."""
        state = self.workers[worker]
        work, state.work = state.work, None
        if isinstance(work, InitLoss):
            self.init_losses[work.key] = value  # None in paired mode
            return []
        reports = []
        for unit, chain in zip(work.units, value):
            if unit.pilot:
                self._pilot_done(unit, chain)
                continue
            self.results[(unit.restriction, unit.chain)] = chain
            reports.append(ChainReport(unit, chain.get("status", "succeeded"), chain, chain.get("message", "")))
        return reports

    def raised(self, worker: int, cause: BaseException, message: str, *, loading: bool = False) -> list[ChainReport]:
        """The worker (alive) raised `cause` while loading or working; `message` describes it."""
        state = self.workers[worker]
        work, state.work = state.work, None
        if isinstance(cause, LLCError):
            raise cause  # a problem with the request (model, data, restriction): retrying cannot help
        if loading:
            raise WorkerFailed(f"loading the model and data failed on a worker: {message}")
        if isinstance(work, InitLoss):
            if self.loss_attempts[work.key] >= self.max_attempts:
                raise WorkerFailed(f"computing L(w*) failed {self.loss_attempts[work.key]} times: {message}")
            self.pending_losses.appendleft(work.key)
            return []
        return self._units_failed(work, message) if work is not None else []

    def check(self, now: float, cancelled: bool) -> None:
        """Raises Cancelled, DeadlineExceeded, or Unavailable when no worker could be placed in time."""
        if any(w.placed for w in self.workers.values()):
            self._none_placed_since = now
        elif now - self._none_placed_since > self.placement_timeout:
            c = self.spec.compute
            raise Unavailable(
                f"no chain worker could be placed for {self.placement_timeout:.0f} s: no Ray node has "
                f"{c.cpus_per_chain * c.chains_per_worker:g} CPUs and {c.gpus_per_chain * c.chains_per_worker:g} GPUs "
                "free (other jobs hold them, or nodes were lost); retry later, add nodes, or lower "
                "compute.cpus_per_chain / compute.gpus_per_chain / compute.chains_per_worker")
        if cancelled:
            raise Cancelled("the job was cancelled; its chains were stopped")
        if self.deadline is not None and now > self.deadline:
            raise DeadlineExceeded(
                f"the job ran longer than compute.timeout_s={self.spec.compute.timeout_s:g} s and was stopped; "
                "raise compute.timeout_s, or lower chains, draws or the number of restrictions")

    # -- retries -------------------------------------------------------------------
    def _units_failed(self, work: RunChains, message: str) -> list[ChainReport]:
        reports = []
        for unit in reversed(work.units):  # requeued at the head in their order
            unit.failures.append(message)
            if unit.attempts < self.max_attempts:
                self.units.appendleft(unit)  # first in line: a retried chain does not wait behind the queue
                if not unit.pilot:
                    reports.append(ChainReport(unit, "retrying", None,
                                               f"attempt {unit.attempts} failed ({message}); retrying"))
                continue
            chain = failed_chain(unit, self.spec.sampler.seed, message)
            if unit.pilot:  # a pilot that failed for good is a row of the calibration, not a chain of the result
                self._pilot_done(unit, chain)
                continue
            self.results[(unit.restriction, unit.chain)] = chain
            reports.append(ChainReport(unit, "failed", chain, chain["message"]))
        return reports[::-1]

    # -- automatic settings: pilots first, then the main chains at the chosen ε ------
    def _plan_settings(self) -> None:
        """nβ from each restriction's dataset size; pilot units (ahead of the queue) where ε or
        burn-in are "auto", else the resolved settings at once."""
        self._planned = True
        sampler = self.spec.sampler
        sizes = self.summary.get("sample_sizes", {})
        pilots: list[ChainUnit] = []
        for r in range(len(self.spec.restrictions)):
            nbeta, info = calibrate.resolve_nbeta(sampler, sizes.get(self.keys[r]))
            plan = calibrate.plan_pilots(sampler, nbeta)
            self.calibrations[r] = {"nbeta": nbeta, "nbeta_rule": info, "warnings": list(info["warnings"])}
            if plan is None:
                self.settings[r] = calibrate.resolve(sampler, nbeta, None).to_dict()
                continue
            self.plans[r] = plan
            self.pilot_results[r] = {}
            pilots += [ChainUnit(r, k, pilot=True) for k in range(len(plan.grid))]
        self.units.extendleft(reversed(pilots))  # ahead of the main chains, restriction by restriction

    def _pilot_done(self, unit: ChainUnit, value: dict[str, Any]) -> None:
        r = unit.restriction
        self.pilot_results[r][unit.chain] = value
        plan = self.plans[r]
        if len(self.pilot_results[r]) < len(plan.grid):
            return
        chains = [ChainResult.from_dict(c) for c in self.pilot_results[r].values()]
        record = calibrate.choose(plan, chains, self.init_losses.get(self.keys[r]))
        base = self.calibrations[r]
        self.calibrations[r] = {**record, **base, "warnings": base["warnings"] + record["warnings"]}
        self.settings[r] = calibrate.resolve(self.spec.sampler, plan.nbeta, record).to_dict()
        log.info("restriction %d calibrated: ε = %.3g, burn-in %d (%s)", r, record["step_size"], record["burn_in"],
                 record["step_size_reason"])


def failed_chain(unit: ChainUnit, seed: int, message: str) -> dict[str, Any]:
    """The result entry of a unit that failed every attempt."""
    return {
        "chain": unit.chain, "seed": chain_seed(seed, unit.chain), "llc": math.nan, "status": "failed",
        "loss_trace": [], "init_trace": [], "mala_acceptance": None, "frac_below_init": None, "steps": 0,
        "message": f"failed {unit.attempts} times; last: {message}", "attempts": unit.attempts,
        "extra": {"failures": list(unit.failures)},
    }
