"""The chain scheduler (cluster/scheduling.py), driven with plain events: no Ray, no private pokes.

The same policy on a real Ray cluster (workers killed, nodes lost) is in tests/cluster/test_ray_cluster.py.
"""
from __future__ import annotations

import math

import pytest

from cluster.contract.errors import Cancelled, DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from cluster.contract.spec import JobSpec
from cluster.engine.seeds import chain_seed
from cluster.result_document import result_document
from cluster.scheduling import ChainScheduler, InitLoss, RunChains, WorkerFailed

KEY = "data"


def make_spec(**overrides) -> JobSpec:
    data = {
        "job_id": "job-1",
        "model": {"local_path": "/nonexistent/model"},
        "dataset": {"files": ["/nonexistent/train.jsonl"], "context_length": 16},
        # fixed ε, nβ and burn-in: no pilots unless a test asks for them
        "sampler": {"chains": 3, "draws": 10, "seed": 5, "step_size": 1e-4, "nbeta": 10.0, "burn_in": 0},
        "restrictions": [{"name": "full"}, {"name": "layer0", "weights": [{"kind": "layer", "layer": 0}]}],
    }
    data.update(overrides)
    return JobSpec.from_dict(data)


def chain_dict(chain: int, llc: float = 1.0, status: str = "succeeded", steps: int = 8) -> dict:
    return {"chain": chain, "seed": 100 + chain, "llc": llc, "status": status,
            "loss_trace": [1.0 + 0.001 * (i % 3) for i in range(steps)], "init_trace": [1.0] * steps,
            "mala_acceptance": 0.9, "frac_below_init": 0.1, "steps": steps, "message": "", "attempts": 1,
            "extra": {}}


def scheduler(spec: JobSpec, workers: int = 1, **kwargs) -> ChainScheduler:
    s = ChainScheduler(spec, [KEY] * len(spec.restrictions), workers=workers, now=0.0, **kwargs)
    for w in range(workers):
        s.worker_started(w)
    return s


def ready(s: ChainScheduler, worker: int, sample_size: int = 20_000) -> bool:
    s.worker_placed(worker)
    return s.worker_ready(worker, {"sample_sizes": {KEY: sample_size}, "model_provenance": {},
                                   "dataset_provenance": {}})


def run_to_end(s: ChainScheduler, worker: int = 0) -> list:
    """Answer every piece of work the worker gets until the job is done; returns the reports."""
    reports = []
    while not s.done:
        work = s.next_work(worker)
        assert work is not None, "the scheduler stalled with work left"
        value = 2.0 if isinstance(work, InitLoss) else [chain_dict(u.chain) for u in work.units]
        reports += s.done_with(worker, value)
    return reports


def test_no_work_before_a_worker_has_loaded_then_init_loss_first_and_once_per_dataset():
    s = scheduler(make_spec(), workers=2)
    assert s.next_work(0) is None  # not loaded: compute waits for the preview
    assert ready(s, 0) is True and ready(s, 1) is False  # the first loaded worker's summary is the preview
    assert s.next_work(0) == InitLoss(KEY)
    assert s.next_work(0) is None  # busy
    assert s.next_work(1) is None  # both restrictions share the dataset: L(w*) once, and chains wait for it
    s.done_with(0, 2.5)
    work = s.next_work(1)
    assert isinstance(work, RunChains) and work.init_loss == 2.5 and work.sampler["step_size"] == 1e-4
    reports = s.done_with(1, [chain_dict(work.units[0].chain)]) + run_to_end(s, 0) + run_to_end(s, 1)
    assert sorted(s.results) == [(r, c) for r in range(2) for c in range(3)]
    assert {r.status for r in reports} == {"succeeded"} and len(reports) == 6


def test_a_failing_chain_is_retried_first_in_line_then_recorded_as_failed_and_the_others_finish():
    s = scheduler(make_spec(compute={"max_chain_retries": 2}))
    ready(s, 0)
    s.done_with(0, s.next_work(0) and 2.0)
    reports = []
    for attempt in (1, 2, 3):
        work = s.next_work(0)
        assert (work.restriction, work.units[0].chain, work.units[0].attempts) == (0, 0, attempt)  # the same unit again
        reports += s.raised(0, RuntimeError(f"boom {attempt}"), f"RuntimeError: boom {attempt}")
    assert [r.status for r in reports] == ["retrying", "retrying", "failed"]
    failed = s.results[(0, 0)]
    assert failed["status"] == "failed" and failed["attempts"] == 3 and math.isnan(failed["llc"])
    assert "failed 3 times" in failed["message"] and "boom 3" in failed["message"]
    assert failed["extra"]["failures"] == [f"RuntimeError: boom {i}" for i in (1, 2, 3)]
    assert failed["seed"] == chain_seed(5, 0)  # the seed the chain would have had
    run_to_end(s)
    assert len(s.results) == 6 and sum(d["status"] == "failed" for d in s.results.values()) == 1


def test_a_request_error_raised_in_a_worker_ends_the_job_at_once_with_that_error():
    s = scheduler(make_spec())
    ready(s, 0)
    s.done_with(0, s.next_work(0) and 2.0)
    s.next_work(0)
    error = InvalidArgument("L(w*) is nan: the loss at the given weights is not finite", field="model")
    with pytest.raises(InvalidArgument) as info:
        s.raised(0, error, "InvalidArgument: ...")
    assert info.value is error  # not retried, not turned into a dead worker or UNAVAILABLE


def test_a_loading_error_is_the_jobs_error_and_a_loading_crash_is_internal():
    s = scheduler(make_spec(), workers=2)
    with pytest.raises(NotFound):
        s.raised(0, NotFound("model not found", field="model.local_path"), "NotFound", loading=True)
    with pytest.raises(WorkerFailed, match="loading the model and data failed on a worker: OSError: disk"):
        s.raised(1, OSError("disk"), "OSError: disk", loading=True)


def test_a_dead_workers_chain_is_requeued_and_deaths_are_bounded():
    s = scheduler(make_spec(compute={"max_chain_retries": 1}), workers=2)
    ready(s, 0), ready(s, 1)
    s.done_with(0, s.next_work(0) and 2.0)
    work = s.next_work(1)
    replace, reports = s.worker_died(1, "node lost")
    assert replace and [r.status for r in reports] == ["retrying"] and "worker process died: node lost" in reports[0].message
    again = s.next_work(0)
    assert again.units[0] is work.units[0] and again.units[0].attempts == 2
    # The budget is workers x attempts = 4 deaths; past it no replacement, and with none left the job ends.
    for w in range(2, 6):
        s.worker_started(w)
        assert s.worker_died(w, "OOM")[0] is (s.deaths <= 4)
    assert s.deaths == 5
    with pytest.raises(Unavailable, match="6 chain worker processes died .* none is left"):
        s.worker_died(0, "OOM")


def test_a_worker_dying_while_computing_init_loss_requeues_it_up_to_the_attempts():
    s = scheduler(make_spec(compute={"max_chain_retries": 0}), workers=2)
    ready(s, 0), ready(s, 1)
    assert s.next_work(0) == InitLoss(KEY)
    with pytest.raises(Unavailable, match=r"workers died 1 times while computing L\(w\*\): gone"):
        s.worker_died(0, "gone")


def test_cancel_deadline_and_placement_are_checked_on_every_tick():
    spec = make_spec(compute={"timeout_s": 5, "cpus_per_chain": 2, "gpus_per_chain": 0.5})
    s = scheduler(spec, deadline=10.0, placement_timeout=60.0)
    s.check(1.0, cancelled=False)
    with pytest.raises(Cancelled):
        s.check(1.0, cancelled=True)
    s.worker_placed(0)
    s.check(9.0, cancelled=False)
    with pytest.raises(DeadlineExceeded, match="raise compute.timeout_s"):
        s.check(11.0, cancelled=False)
    unplaced = scheduler(spec, placement_timeout=60.0)
    unplaced.check(59.0, cancelled=False)
    with pytest.raises(Unavailable, match="no Ray node has 2 CPUs and 0.5 GPUs free"):
        unplaced.check(61.0, cancelled=False)


def test_chains_per_worker_batches_main_chains_of_one_restriction():
    s = scheduler(make_spec(compute={"chains_per_worker": 2}))
    ready(s, 0)
    s.done_with(0, s.next_work(0) and 2.0)
    groups = []
    while not s.done:
        work = s.next_work(0)
        groups.append((work.restriction, [u.chain for u in work.units]))
        s.done_with(0, [chain_dict(u.chain) for u in work.units])
    assert groups == [(0, [0, 1]), (0, [2]), (1, [0, 1]), (1, [2])]


def test_auto_settings_run_pilots_as_units_then_the_main_chains_at_the_chosen_step():
    """The pilots are ordinary units queued ahead of the main chains; once a restriction's pilots
    are in, its main chains get the resolved settings, and pilots are not chains of the result."""
    spec = make_spec(sampler={"chains": 2, "draws": 300, "seed": 5})
    s = scheduler(spec)
    ready(s, 0)
    s.done_with(0, s.next_work(0) and None)  # paired mode: no L(w*) number
    work = s.next_work(0)  # the restrictions' pilots are planned once the preview gave the data's size
    plan = s.plans[0]
    assert s.settings == {} and plan.cost_steps <= 2 * 300 / 3 + len(plan.grid) * 60
    seen = []
    for k in range(2 * len(plan.grid)):  # MALA falls with ε; the fourth pilot is the last above the target
        work = work or s.next_work(0)
        assert work.pilot and len(work.units) == 1
        unit = work.units[0]
        seen.append((work.restriction, unit.chain))
        s.done_with(0, [{**chain_dict(unit.chain, steps=plan.steps), "mala_acceptance": 0.99 - 0.05 * unit.chain,
                         "gradient_noise": 0.0}])
        work = None
    assert seen == [(r, k) for r in range(2) for k in range(len(plan.grid))]  # every pilot before any main chain
    # the fourth pilot (MALA 0.84) is chosen; ε moves up to where MALA crosses 0.8 towards the fifth (0.79)
    refined = plan.grid[3] * (plan.grid[4] / plan.grid[3]) ** 0.8
    settings = s.settings[0]
    assert settings["step_size"] == pytest.approx(refined) and settings["nbeta"] == pytest.approx(20_000 / math.log(20_000))
    assert isinstance(settings["burn_in"], int) and s.results == {}
    main = s.next_work(0)
    assert not main.pilot and main.sampler == settings
    doc = result_document(spec, {(0, 0): chain_dict(0), (0, 1): chain_dict(1, 1.2)}, [None, None], None, {},
                          settings=s.settings, calibrations=s.calibrations)
    full = doc["restrictions"][0]
    assert full["config"]["step_size"] == pytest.approx(refined)
    assert [p["chosen"] for p in full["calibration"]["pilots"]].index(True) == 3


def test_preset_settings_plan_no_pilots():
    preset = {r: make_spec().sampler.to_dict() for r in range(2)}
    s = scheduler(make_spec(sampler={"chains": 1, "draws": 10}), settings=preset)
    ready(s, 0)
    run_to_end(s)
    assert s.plans == {} and len(s.results) == 2
