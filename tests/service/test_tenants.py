"""Tenants and bounded responses on a real llc.v1 server (127.0.0.1, a real SQLite file):
tokens name principals; a principal gets, lists, watches and cancels only its own estimates
(another's is NOT_FOUND, word for word as a missing one), an admin every one; the
`llc-client-id` header never chooses the owner when tokens are set; ListEstimates returns
summaries unless the full view is asked for; each loss trace travels once; a watch never
goes back in seq. The per-principal limit under concurrency: tests/service/test_store.py (64
threads) and, through the server on a real Ray cluster, the slow test at the end."""
from __future__ import annotations

import json
import threading

import grpc
import pytest
import yaml

from cluster.contract.errors import InvalidArgument
from cluster.contract.events import encode
from llc.v1 import llc_pb2 as pb
from llc.v1 import llc_pb2_grpc
from service.config import ServerConfig
from service.identity import load_tokens_file
from service.states import JobState
from service.store import JobRecord
from tests.service.test_convert import result_document

ALICE, BOB, OPS = "alice-token-0123456789abcdef", "bob-token-0123456789abcdef", "ops-token-0123456789abcdef"


def tokens_file(tmp_path, entries: dict | None = None) -> str:
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump(entries or {ALICE: {"principal": "alice"}, BOB: {"principal": "bob"},
                                               OPS: {"principal": "ops", "role": "admin"}}))
    return str(path)


def as_(token: str, client_id: str = "") -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] + ([("llc-client-id", client_id)] if client_id else [])


def stored(server, job_id: str, owner: str, state=JobState.QUEUED, result=None, events=()) -> str:
    store = server.server.store
    spec = {"job_id": job_id, "model": {"hub_id": "org/model"}, "dataset": {"files": ["/data/a.jsonl"] * 50},
            "restrictions": [{"name": "full", "weights": []}, {"name": "head0", "weights": [{"kind": "all"}]}]}
    store.create(JobRecord(id=job_id, owner=owner, spec_json=json.dumps(spec), fingerprint="fp"))
    store.add_events(job_id, list(events))
    if state != JobState.QUEUED:
        store.transition(job_id, JobState.RUNNING)
    if state not in (JobState.QUEUED, JobState.RUNNING):
        store.transition(job_id, state, result=result)
    return job_id


def failure(call, request, metadata) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        response = call(request, metadata=metadata, timeout=10)
        if not hasattr(response, "ListFields"):
            list(response)  # a stream: the error arrives while reading
    return info.value.code(), info.value.details()


@pytest.fixture
def tenants(make_server, tmp_path):
    server = make_server(tokens_file=tokens_file(tmp_path), max_active_per_client=3)
    with grpc.insecure_channel(server.address) as channel:
        yield server, llc_pb2_grpc.LLCServiceStub(channel)


# ------------------------------------------------------------------ tokens file
@pytest.mark.parametrize("content,fragment", [
    ("{}", "names no tokens"),
    ("[1, 2]", "top level"),
    ("'x-0123456789abcdef': {principal: 'has space'}", "entry 1.principal"),
    ("'x-0123456789abcdef': {principal: a, role: root}", "entry 1.role"),
    ("'x-0123456789abcdef': {principal: a, team: b}", "entry 1.team"),
    ("'x-0123456789abcdef': {role: admin}", "entry 1.principal"),
    ("short: {principal: a}", "shorter than 16"),
    ("'x-0123456789abcdef': {principal: a}\n'y 0123456789abcdef': {principal: b}", "entry 2 (principal 'b')"),
    ("{unclosed", "not YAML/JSON"),
])
def test_a_bad_tokens_file_stops_the_server_with_the_entry_to_fix_and_never_the_token(tmp_path, content, fragment):
    path = tmp_path / "tokens.yaml"
    path.write_text(content)
    with pytest.raises(InvalidArgument) as info:
        ServerConfig(ray_dashboard_url="http://127.0.0.1:1", tokens_file=str(path))
    assert fragment in info.value.message and "0123456789abcdef" not in info.value.message, info.value.message
    with pytest.raises(InvalidArgument, match="cannot be read"):
        load_tokens_file(str(tmp_path / "missing.yaml"))


def test_tokens_file_roles_and_the_single_token_as_one_admin_principal(tmp_path):
    config = ServerConfig(ray_dashboard_url="http://127.0.0.1:1", tokens_file=tokens_file(tmp_path), token="t" * 20)
    assert config.auth.principal(as_(ALICE, client_id="ops")).name == "alice"
    assert not config.auth.principal(as_(ALICE)).admin and config.auth.principal(as_(OPS)).admin
    shared = config.auth.principal(as_("t" * 20))
    assert (shared.name, shared.admin) == ("default", True)
    assert config.auth.principal(as_("wrong-token-0123456789")) is None and config.auth.principal([]) is None
    open_server = ServerConfig(ray_dashboard_url="http://127.0.0.1:1")  # no tokens: one trust domain, labels only
    assert not open_server.auth.required and open_server.auth.principal([("llc-client-id", "x")]).name == "x"


# ------------------------------------------------------------------ isolation
def test_principals_get_watch_and_cancel_only_their_own_estimates(tenants):
    server, llc = tenants
    stored(server, "est-alice", "alice", JobState.RUNNING)
    stored(server, "est-bob", "bob")
    for call, request in ((llc.GetEstimate, pb.GetEstimateRequest), (llc.CancelEstimate, pb.CancelEstimateRequest),
                          (llc.WatchEstimate, pb.WatchEstimateRequest)):
        # bob's estimate, even with bob's client id claimed, reads exactly like one that does not exist
        others = failure(call, request(estimate_id="est-bob"), as_(ALICE, client_id="bob"))
        missing = failure(call, request(estimate_id="est-nope"), as_(ALICE))
        assert others[0] == missing[0] == grpc.StatusCode.NOT_FOUND
        assert others[1].replace("est-bob", "ID") == missing[1].replace("est-nope", "ID"), (others, missing)
    assert server.server.store.get("est-bob").state == JobState.QUEUED  # alice's cancel did nothing
    mine = llc.GetEstimate(pb.GetEstimateRequest(estimate_id="est-alice"), metadata=as_(ALICE), timeout=10).estimate
    assert mine.owner == "alice" and mine.state == pb.ESTIMATE_STATE_RUNNING
    listed = lambda token, client_id="": [e.estimate_id for e in llc.ListEstimates(  # noqa: E731
        pb.ListEstimatesRequest(), metadata=as_(token, client_id), timeout=10).estimates]
    assert listed(ALICE) == listed(ALICE, client_id="ops") == ["est-alice"] and listed(BOB) == ["est-bob"]
    assert sorted(listed(OPS)) == ["est-alice", "est-bob"]
    # The admin sees and cancels anyone's; the owner then sees who did.
    assert llc.GetEstimate(pb.GetEstimateRequest(estimate_id="est-bob"), metadata=as_(OPS), timeout=10).estimate.owner \
        == "bob"
    cancelled = llc.CancelEstimate(pb.CancelEstimateRequest(estimate_id="est-bob"), metadata=as_(OPS), timeout=10)
    assert cancelled.estimate.state == pb.ESTIMATE_STATE_CANCELLED
    seen = llc.GetEstimate(pb.GetEstimateRequest(estimate_id="est-bob"), metadata=as_(BOB), timeout=10).estimate
    assert seen.state == pb.ESTIMATE_STATE_CANCELLED and "cancelled by 'ops'" in seen.error.message
    got, message = failure(llc.ListEstimates, pb.ListEstimatesRequest(), as_("not-a-known-token-0123456789"))
    assert got == grpc.StatusCode.UNAUTHENTICATED and "token" in message


def test_the_client_id_header_cannot_choose_the_owner_the_limit_counts(tenants, tmp_path):
    server, llc = tenants
    for i in range(3):
        stored(server, f"est-{i}", "alice")
    spec = pb.EstimateSpec(model=pb.ModelRef(hub_id="org/model"), dataset=pb.DatasetRef(hub_id="org/data"))
    for client_id in ("", "bob", "fresh-label"):
        got, message = failure(llc.CreateEstimate, pb.CreateEstimateRequest(spec=spec), as_(ALICE, client_id))
        assert got == grpc.StatusCode.RESOURCE_EXHAUSTED and "'alice' already has 3" in message, message
    # bob's own slots are his: he gets past the limit to the (here absent) Ray cluster.
    assert failure(llc.CreateEstimate, pb.CreateEstimateRequest(spec=spec), as_(BOB))[0] == grpc.StatusCode.UNAVAILABLE


# ------------------------------------------------------------------ bounded responses
def test_list_returns_summaries_unless_the_full_view_is_asked_for(tenants):
    server, llc = tenants
    stored(server, "est-done", "alice", JobState.SUCCEEDED, result=result_document())
    summary, = llc.ListEstimates(pb.ListEstimatesRequest(), metadata=as_(ALICE), timeout=10).estimates
    same, = llc.ListEstimates(pb.ListEstimatesRequest(view=pb.ESTIMATE_VIEW_SUMMARY), metadata=as_(ALICE),
                              timeout=10).estimates
    full, = llc.ListEstimates(pb.ListEstimatesRequest(view=pb.ESTIMATE_VIEW_FULL), metadata=as_(ALICE),
                              timeout=10).estimates
    got = llc.GetEstimate(pb.GetEstimateRequest(estimate_id="est-done"), metadata=as_(ALICE), timeout=10).estimate
    assert summary == same and full == got
    assert not summary.HasField("result") and full.HasField("result")
    assert summary.state == pb.ESTIMATE_STATE_SUCCEEDED and summary.owner == "alice" and summary.create_time.seconds
    assert summary.spec.model.hub_id == "org/model" and [r.name for r in summary.spec.restrictions] == ["full", "head0"]
    assert not summary.spec.dataset.files and not summary.spec.restrictions[1].weights
    assert summary.ByteSize() * 3 < full.ByteSize()
    got, message = failure(llc.ListEstimates, pb.ListEstimatesRequest(view=7), as_(ALICE))
    assert got == grpc.StatusCode.INVALID_ARGUMENT and "ESTIMATE_VIEW_FULL" in message


def test_the_cli_lists_summaries_and_full_estimates_with_full(tenants, capsys):
    from llc.cli import main

    server, _ = tenants
    stored(server, "est-done", "alice", JobState.SUCCEEDED, result=result_document())
    for extra, has_result in (([], False), (["--full"], True)):
        assert main(["jobs", "--address", server.address, "--token", ALICE, "--json", *extra]) == 0
        listed, = json.loads(capsys.readouterr().out)
        assert listed["id"] == "est-done" and (listed["result"] is not None) == has_result
    assert main(["jobs", "--address", server.address, "--token", ALICE, "--full"]) == 0
    assert "full=2.5±0" in capsys.readouterr().out  # λ̂ per restriction in the table line


def test_each_loss_trace_is_sent_once_and_the_sdk_derives_loss_traces_from_the_chains(tenants):
    from llc import Client

    server, llc = tenants
    stored(server, "est-done", "alice", JobState.SUCCEEDED, result=result_document())
    restriction = llc.GetEstimate(pb.GetEstimateRequest(estimate_id="est-done"), metadata=as_(ALICE),
                                  timeout=10).estimate.result.restrictions[0]
    assert "loss_traces" not in pb.RestrictionResult.DESCRIPTOR.fields_by_name
    assert [list(c.loss_trace) for c in restriction.chains] == [[1.0, 1.1], [1.0, 1.1]]
    with Client(server.address, token=ALICE) as client:
        result = client.get("est-done").result
        assert result["full"].loss_traces == [[1.0, 1.1], [1.0, 1.1]]
        assert client.list()[0].result is None and client.list(full=True)[0].result.to_dict() == result.to_dict()


# ------------------------------------------------------------------ watch order
def history(n_progress: int) -> list[dict]:
    events = [{"type": "started", "seq": 0, "time": 1.0, "chains_total": 1, "restrictions": ["full"]}]
    events += [{"type": "progress", "seq": i, "time": 1.0, "restriction": "full", "chain": 0, "step": i,
                "total_steps": n_progress, "llc_running": 0.5} for i in range(1, n_progress + 1)]
    events.append({"type": "chain", "seq": n_progress + 1, "time": 1.0, "restriction": "full", "chain": 0,
                   "status": "succeeded", "llc": 0.5})
    return events + [{"type": "result", "seq": n_progress + 2, "time": 1.0, "result": result_document()}]


def test_watch_of_a_finished_estimate_replays_in_seq_order_and_ends_with_the_terminal_snapshot(tenants):
    from llc import Client

    server, llc = tenants
    stored(server, "est-done", "alice", JobState.SUCCEEDED, result=result_document(), events=history(5))
    msgs = list(llc.WatchEstimate(pb.WatchEstimateRequest(estimate_id="est-done", after_seq=-1), metadata=as_(ALICE),
                                  timeout=10))
    kinds = [m.WhichOneof("event") for m in msgs]
    assert kinds == ["started"] + ["progress"] * 5 + ["chain", "snapshot"]
    seqs = [m.seq for m in msgs]
    assert seqs == sorted(set(seqs)) and seqs[-1] == 7  # strictly increasing; the snapshot covers the result event
    assert msgs[-1].snapshot.state == pb.ESTIMATE_STATE_SUCCEEDED
    resumed = list(llc.WatchEstimate(pb.WatchEstimateRequest(estimate_id="est-done", after_seq=3), metadata=as_(ALICE),
                                     timeout=10))
    assert [m.seq for m in resumed] == [4, 5, 6, 7]
    # A client that stops at the first terminal snapshot has seen every event.
    with Client(server.address, token=ALICE) as client:
        seen = []
        for event in client.watch("est-done", after_seq=-1):
            seen.append(event.kind)
            if event.estimate is not None and event.estimate.is_terminal:
                break
    assert seen == kinds


def test_a_live_watch_never_goes_back_in_seq(make_server, tmp_path):
    server = make_server(tokens_file=tokens_file(tmp_path), watch_poll_s=0.2)
    events = history(4)
    stored(server, "est-live", "alice", JobState.RUNNING, events=events[:3])
    received, first_snapshot = [], threading.Event()
    with grpc.insecure_channel(server.address) as channel:
        stream = llc_pb2_grpc.LLCServiceStub(channel).WatchEstimate(
            pb.WatchEstimateRequest(estimate_id="est-live", after_seq=-1), metadata=as_(ALICE), timeout=30)

        def read():
            for msg in stream:
                received.append(msg)
                if msg.WhichOneof("event") == "snapshot":
                    first_snapshot.set()

        reader = threading.Thread(target=read)
        reader.start()
        assert first_snapshot.wait(10)
        store = server.server.store
        store.add_events("est-live", events[3:-1])
        server.server._notifier.notify("est-live")
        store.add_events("est-live", events[-1:])
        store.transition("est-live", JobState.SUCCEEDED, result=result_document())
        server.server._notifier.notify("est-live")
        reader.join(20)
    seqs = [m.seq for m in received]
    assert seqs == sorted(seqs), seqs
    assert [m.seq for m in received if m.WhichOneof("event") != "snapshot"] == [0, 1, 2, 3, 4, 5]
    assert received[2].WhichOneof("event") == "progress" and received[3].snapshot.state == pb.ESTIMATE_STATE_RUNNING
    assert received[-1].snapshot.state == pb.ESTIMATE_STATE_SUCCEEDED and received[-1].seq == 6


# ------------------------------------------------------------------ creates on a real Ray cluster
@pytest.mark.slow
def test_concurrent_creates_through_the_server_respect_the_principals_limit(ray_head, tmp_path):
    """24 concurrent CreateEstimate calls by alice (each its own channel, claiming other client ids)
    against a limit of 8 create exactly 8, all owned by alice; bob sees none, the admin all.
    Before, the count ran before an await and the insert after it, so every call got through."""
    from service.server import BackgroundServer
    from tests.service.test_runner import fake_interpreter

    started = encode({"type": "started", "seq": 0, "time": 0, "chains_total": 1, "restrictions": ["full"]})
    python = fake_interpreter(tmp_path / "python", f"echo '{started}'\nsleep 120\n")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "a b"}) + "\n")
    config = ServerConfig(address="127.0.0.1:0", store_url=str(tmp_path / "j.sqlite"),
                          tokens_file=tokens_file(tmp_path),
                          ray_dashboard_url=ray_head.dashboard_url, driver_python=python, check_local_paths=False,
                          max_active_per_client=8)
    spec = pb.EstimateSpec(model=pb.ModelRef(hub_id="org/model"), dataset=pb.DatasetRef(files=[str(data)]))
    spec.sampler.chains, spec.sampler.draws = 1, 5
    with BackgroundServer(config) as server:
        gate, outcomes = threading.Barrier(24), []

        def create(i):
            with grpc.insecure_channel(server.address) as channel:
                stub = llc_pb2_grpc.LLCServiceStub(channel)
                gate.wait()
                try:
                    made = stub.CreateEstimate(pb.CreateEstimateRequest(request_id=f"r{i}", spec=spec),
                                               metadata=as_(ALICE, client_id=f"label-{i}"), timeout=60)
                    outcomes.append(made.estimate.owner)
                except grpc.RpcError as exc:
                    outcomes.append(exc.code().name)

        threads = [threading.Thread(target=create, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        with grpc.insecure_channel(server.address) as channel:
            llc = llc_pb2_grpc.LLCServiceStub(channel)
            listed = lambda token: llc.ListEstimates(pb.ListEstimatesRequest(), metadata=as_(token),  # noqa: E731
                                                     timeout=10).estimates
            try:
                assert sorted(outcomes) == ["RESOURCE_EXHAUSTED"] * 16 + ["alice"] * 8, outcomes
                assert len(listed(ALICE)) == 8 and listed(BOB) == [] and len(listed(OPS)) == 8
            finally:
                for est in listed(OPS):
                    llc.CancelEstimate(pb.CancelEstimateRequest(estimate_id=est.estimate_id), metadata=as_(OPS),
                                       timeout=30)
