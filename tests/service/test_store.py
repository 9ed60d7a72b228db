"""The job store: the same tests on SQLite and PostgreSQL (see tests/fixtures/service.py)."""
import math
import threading

import pytest

from cluster.contract.errors import InvalidArgument, ResourceExhausted
from service.states import JobState
from service.store import JobRecord, open_store


def rec(job_id: str, owner: str = "alice", request_id: str = "", created_at: float = 0.0) -> JobRecord:
    return JobRecord(id=job_id, owner=owner, spec_json='{"job_id": "%s"}' % job_id, request_id=request_id,
                     fingerprint="fp", created_at=created_at)


def test_create_and_get_roundtrip(store):
    stored, created = store.create(rec("j1", request_id="r1"))
    assert created and stored.state == JobState.QUEUED and stored.last_seq == -1
    got = store.get("j1")
    assert got.owner == "alice" and got.request_id == "r1" and got.spec == {"job_id": "j1"}
    assert got.created_at > 0 and got.state == JobState.QUEUED
    assert store.get("nope") is None


def test_create_is_idempotent_per_owner_and_request_id(store):
    first, created = store.create(rec("j1", request_id="r1"))
    again, created_again = store.create(rec("j2", request_id="r1"))
    assert created and not created_again and again.id == "j1"
    assert store.get("j2") is None
    other, created_other = store.create(rec("j3", owner="bob", request_id="r1"))  # another client's key space
    assert created_other and other.id == "j3"
    # Without a request id nothing is deduplicated.
    assert store.create(rec("j4"))[1] and store.create(rec("j5"))[1]


def test_duplicate_job_id_is_refused(store):
    store.create(rec("j1"))
    with pytest.raises(InvalidArgument, match="already exists"):
        store.create(rec("j1"))


def test_concurrent_creates_with_one_request_id_make_one_job(store):
    results = []

    def create(i):
        results.append(store.create(rec(f"j{i}", request_id="same"))[0].id)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(store.list(page_size=50)[0]) == 1


@pytest.mark.parametrize("connections", ["one per thread", "one shared"])
def test_64_concurrent_creates_against_a_limit_of_16_create_exactly_16(store_url, store, connections):
    """The count and the insert are one transaction: threads (one store) and processes or replicas
    (a connection each) cannot both see 15 and both insert. Before, 32 of 32 got through."""
    url, kwargs = store_url
    stores = [open_store(url, **kwargs) for _ in range(64)] if connections == "one per thread" else [store] * 64
    store.create(rec("other", owner="bob"))  # another owner's job counts for bob only
    start, outcomes = threading.Barrier(64), []

    def create(i):
        start.wait()
        try:
            stores[i].create(rec(f"j{i}"), max_active=16)
            outcomes.append("created")
        except ResourceExhausted as exc:
            outcomes.append("refused" if "'alice' already has 16 " in exc.message else exc.message)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(64)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        for s in set(stores) - {store}:
            s.close()
    assert sorted(outcomes) == ["created"] * 16 + ["refused"] * 48
    assert store.count_active("alice") == 16 and len(store.list(owner="alice", page_size=100)[0]) == 16


def test_the_limit_counts_unfinished_jobs_and_spares_idempotent_retries(store):
    store.create(rec("j1", request_id="r1"), max_active=2)
    store.create(rec("j2"), max_active=2)
    with pytest.raises(ResourceExhausted, match="'alice' already has 2 .*--max-active-per-client"):
        store.create(rec("j3"), max_active=2)
    assert store.create(rec("j4", request_id="r1"), max_active=2) == (store.get("j1"), False)  # a retry, not new
    assert store.create(rec("j5", owner="bob"), max_active=2)[1]
    store.transition("j2", JobState.CANCELLED)
    assert store.create(rec("j3"), max_active=2)[1]  # a finished job frees its slot
    assert store.get("j4") is None


def test_list_filters_by_owner(store):
    for i, owner in enumerate(["alice", "bob", "alice"]):
        store.create(rec(f"j{i}", owner=owner, created_at=1000.0 + i))
    assert [r.id for r in store.list(owner="alice")[0]] == ["j2", "j0"]
    page, token = store.list(owner="alice", page_size=1)
    assert [r.id for r in page] == ["j2"] and [r.id for r in store.list(owner="alice", page_token=token)[0]] == ["j0"]
    assert [r.id for r in store.list(owner="carol")[0]] == [] and len(store.list()[0]) == 3


def test_transitions_follow_the_state_machine(store):
    store.create(rec("j1"))
    assert store.transition("j1", JobState.QUEUED) is None
    running = store.transition("j1", JobState.RUNNING)
    assert running.state == JobState.RUNNING and running.started_at > 0
    done = store.transition("j1", JobState.SUCCEEDED, result={"restrictions": [], "x": math.nan})
    assert done.state == JobState.SUCCEEDED and done.ended_at >= done.started_at
    assert math.isnan(done.result["x"])  # NaN survives (diverged chains are NaN)
    # Terminal: a late cancel or failure cannot overwrite the result.
    assert store.transition("j1", JobState.CANCELLED) is None
    assert store.transition("j1", JobState.FAILED, error_code="INTERNAL", error_message="x") is None
    assert store.get("j1").state == JobState.SUCCEEDED and store.get("j1").error_code == ""


def test_failure_keeps_code_and_message(store):
    store.create(rec("j1"))
    failed = store.transition("j1", JobState.FAILED, error_code="NOT_FOUND", error_message="no such model")
    assert (failed.state, failed.error_code, failed.error_message) == (JobState.FAILED, "NOT_FOUND", "no such model")


def test_events_are_stored_once_by_seq_and_read_after_a_seq(store):
    store.create(rec("j1"))
    new = store.add_events("j1", [{"type": "started", "seq": 0}, {"type": "progress", "seq": 1, "step": 5}])
    assert [e["seq"] for e in new] == [0, 1]
    # A re-read log repeats events: only unseen seqs are new.
    new = store.add_events("j1", [{"type": "progress", "seq": 1, "step": 5}, {"type": "chain", "seq": 2}])
    assert [e["seq"] for e in new] == [2]
    assert store.get("j1").last_seq == 2
    assert [e.seq for e in store.events("j1")] == [0, 1, 2]
    assert [e.event["type"] for e in store.events("j1", after_seq=0)] == ["progress", "chain"]
    assert store.events("j1", after_seq=2) == []
    assert store.events("other") == []


def test_list_pages_newest_first_and_filters_by_state(store):
    for i in range(7):
        store.create(rec(f"j{i}", created_at=1000.0 + i))
    store.transition("j3", JobState.RUNNING)
    store.transition("j5", JobState.CANCELLED)
    seen, token = [], ""
    while True:
        page, token = store.list(page_size=3, page_token=token)
        seen += [r.id for r in page]
        if not token:
            break
    assert seen == [f"j{i}" for i in reversed(range(7))]
    running, _ = store.list(states=[JobState.RUNNING, JobState.CANCELLED])
    assert {r.id for r in running} == {"j3", "j5"}
    with pytest.raises(InvalidArgument, match="page_token"):
        store.list(page_token="garbage!")


def test_active_jobs_and_counts_per_owner(store):
    for i, owner in enumerate(["alice", "alice", "bob", "alice"]):
        store.create(rec(f"j{i}", owner=owner, created_at=1000.0 + i))
    store.transition("j1", JobState.RUNNING)
    store.transition("j3", JobState.FAILED)
    assert [r.id for r in store.active()] == ["j0", "j1", "j2"]
    assert store.count_active("alice") == 2 and store.count_active("bob") == 1 and store.count_active("carol") == 0


def test_submission_and_progress_are_saved(store):
    store.create(rec("j1"))
    store.set_submission("j1", "llc-j1")
    store.set_progress("j1", {"fraction": 0.5})
    got = store.get("j1")
    assert got.submission_id == "llc-j1" and got.progress == {"fraction": 0.5}


def test_jobs_survive_reopening_the_store(store_url, store):
    url, kwargs = store_url
    store.create(rec("j1", request_id="r1"))
    store.transition("j1", JobState.RUNNING)
    store.add_events("j1", [{"type": "started", "seq": 0}])
    store.close()
    reopened = open_store(url, **kwargs)
    try:
        assert reopened.get("j1").state == JobState.RUNNING
        assert [e.seq for e in reopened.events("j1")] == [0]
        assert reopened.create(rec("j2", request_id="r1"))[0].id == "j1"
    finally:
        reopened.close()


def test_postgres_store_reconnects_after_losing_its_connection():
    import uuid

    import psycopg

    from tests.fixtures.service import postgres_url

    url = postgres_url()
    store = open_store(url, schema=f"llc_test_{uuid.uuid4().hex[:12]}")
    try:
        store.create(rec("j1"))
        pid = store._conn.info.backend_pid
        with psycopg.connect(url, autocommit=True) as admin:  # what a server restart does to our session
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert store.get("j1").id == "j1"  # the call that notices the loss reconnects and retries
        assert store._conn.info.backend_pid != pid
        pid = store._conn.info.backend_pid
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert store.create(rec("j2"), max_active=16)[1]  # a create's transaction reconnects before it begins
        assert store.get("j2").state == JobState.QUEUED
    finally:
        store.drop()
        store.close()
