"""The job tracker (service/tracker.py) driven with plain driver events on a real store: no Ray.

The runner that feeds it from a Ray job's log is covered end to end in tests/service/test_runner.py
and tests/service/test_e2e.py.
"""
from __future__ import annotations

import json

import pytest

from service.notify import JobNotifier
from service.states import JobState
from service.store import JobRecord
from service.tracker import JobTracker

SPEC = {"job_id": "j1", "sampler": {"chains": 2, "draws": 10, "burn_in": 0, "steps_between_draws": 1},
        "restrictions": [{"name": "full"}]}


@pytest.fixture
def tracker(store):
    store.create(JobRecord(id="j1", owner="alice", spec_json=json.dumps(SPEC), request_id="", fingerprint="fp"))
    return JobTracker(store, JobNotifier())


def event(seq: int, type_: str, **fields) -> dict:
    return {"seq": seq, "time": 0.0, "type": type_, **fields}


def started() -> dict:
    return event(0, "started", chains_total=2, restrictions=["full"])


def chain(seq: int, c: int) -> dict:
    return event(seq, "chain", restriction="full", chain=c, status="succeeded", llc=1.5, attempt=1, message="")


def test_events_move_the_job_to_running_then_succeeded_and_fold_into_progress(tracker, store):
    assert tracker.ingest("j1", [started(), event(1, "progress", restriction="full", chain=0, step=5, total_steps=10,
                                                  llc_running=1.0, attempt=1)]) is False
    rec = store.get("j1")
    assert rec.state == JobState.RUNNING and rec.progress["steps_done"] == 5
    assert tracker.ingest("j1", [chain(2, 0), chain(3, 1)]) is False
    assert store.get("j1").progress["chains_finished"] == 2
    assert tracker.ingest("j1", [event(4, "result", result={"restrictions": []})]) is True
    rec = store.get("j1")
    assert rec.state == JobState.SUCCEEDED and rec.result == {"restrictions": []} and rec.progress["fraction"] == 1.0


def test_a_reread_log_adds_nothing_and_lines_without_seq_are_ignored(tracker, store):
    tracker.ingest("j1", [started(), chain(1, 0)])
    tracker.ingest("j1", [started(), chain(1, 0), {"type": "chain"}, "noise"])
    assert [e.seq for e in store.events("j1", -1, limit=10)] == [0, 1]
    assert store.get("j1").progress["chains_finished"] == 1  # folded once


def test_a_driver_error_keeps_its_code_and_partial_result_and_cancelled_is_cancelled(tracker, store):
    tracker.ingest("j1", [started(), event(1, "error", code="RESOURCE_EXHAUSTED", message="out of memory",
                                           partial_result={"restrictions": ["x"]})])
    rec = store.get("j1")
    assert (rec.state, rec.error_code, rec.error_message, rec.result) == (
        JobState.FAILED, "RESOURCE_EXHAUSTED", "out of memory", {"restrictions": ["x"]})
    store.create(JobRecord(id="j2", owner="alice", spec_json=json.dumps(SPEC), request_id="", fingerprint="fp"))
    tracker.ingest("j2", [started(), event(1, "error", code="CANCELLED", message="stopped")])
    assert store.get("j2").state == JobState.CANCELLED


@pytest.mark.parametrize("status,state,code,says", [
    ("SUCCEEDED", JobState.FAILED, "INTERNAL", "exited without a result; last log lines:\n"),
    ("FAILED", JobState.FAILED, "INTERNAL", "the driver failed (exit 3); last log lines:\n"),
    ("STOPPED", JobState.CANCELLED, "CANCELLED", "was stopped outside this service"),
])
def test_a_ray_job_that_ended_without_result_or_error_is_judged_by_its_status(tracker, store, status, state, code, says):
    from cluster.contract.events import encode

    log_text = encode(started()) + "\nSegfault\n"
    tracker.ray_job_ended("j1", "llc-j1", status, "exit 3", log_text)
    rec = store.get("j1")
    assert (rec.state, rec.error_code) == (state, code) and says in rec.error_message
    assert status == "STOPPED" or rec.error_message.endswith("Segfault")  # the log's last lines


def test_a_ray_job_whose_log_holds_the_result_succeeds_whatever_its_status(tracker, store):
    from cluster.contract.events import encode

    log_text = "\n".join(encode(e) for e in (started(), event(1, "result", result={"restrictions": []})))
    tracker.ray_job_ended("j1", "llc-j1", "FAILED", "exit 1", log_text)
    assert store.get("j1").state == JobState.SUCCEEDED


def test_a_cancel_reports_a_submission_that_landed_after_the_read(tracker, store):
    before = store.get("j1")  # read before the submission was stored
    assert tracker.submitted("j1", "llc-j1") is True
    done, landed = tracker.cancel(before, "the user cancelled")
    assert done.state == JobState.CANCELLED and landed == "llc-j1"
    assert tracker.submitted("j1", "llc-j1") is False  # ended: the caller stops what it started
