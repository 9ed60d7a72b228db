"""The llc.v1 server on 127.0.0.1:0 without a Ray cluster: validation, error codes, limits,
auth, TLS, health, reflection, deadlines. Every bad request gets its specific status code
and a message naming what to change, and the server keeps serving afterwards."""
from __future__ import annotations

import json
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llc.v1 import llc_pb2 as pb
from llc.v1 import llc_pb2_grpc
from service.states import JobState
from service.store import JobRecord

CLIENT = [("llc-client-id", "tester")]


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "empty_model").mkdir()
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"text": "the cat sat"}) + "\n")
    return {"model": str(model), "data": str(data), "empty_model": str(tmp_path / "empty_model"),
            "missing": str(tmp_path / "missing")}


def valid_spec(files) -> pb.EstimateSpec:
    spec = pb.EstimateSpec()
    spec.model.local_path = files["model"]
    spec.dataset.files.append(files["data"])
    spec.sampler.chains = 2
    spec.sampler.draws = 10
    return spec


@pytest.fixture
def server(make_server):
    return make_server(max_chains=256, max_total_draws=10_000_000, max_active_per_client=3)


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield llc_pb2_grpc.LLCServiceStub(channel), health_pb2_grpc.HealthStub(channel)


def code_of(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, metadata=kwargs.pop("metadata", CLIENT), timeout=kwargs.pop("timeout", 10), **kwargs)
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)  # a stream: errors arrive while reading
    return info.value.code(), info.value.details()


def assert_serving(stub) -> None:
    llc, health = stub
    assert health.Check(health_pb2.HealthCheckRequest(service="llc.v1.LLCService"), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING
    assert code_of(llc.GetEstimate, pb.GetEstimateRequest(estimate_id="est-nope"))[0] == grpc.StatusCode.NOT_FOUND


def _set(path: str, value):
    def mutate(spec: pb.EstimateSpec, files):
        *parents, leaf = path.split(".")
        msg = spec
        for p in parents:
            msg = getattr(msg, p)
        setattr(msg, leaf, files.get(value, value) if isinstance(value, str) else value)
    return mutate


def _call(fn):
    return fn


INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
BAD_SPECS = [
    # (id, mutation of a valid spec, code, fragment of the message)
    ("no-model", lambda s, f: s.ClearField("model"), INVALID, "model"),
    ("bad-hub-id", lambda s, f: setattr(s.model, "hub_id", "not a//hub id"), INVALID, "hub id"),
    ("no-dataset", lambda s, f: s.ClearField("dataset"), INVALID, "dataset"),
    ("dataset-hub-and-files", lambda s, f: setattr(s.dataset, "hub_id", "owner/name"), INVALID, "exactly one"),
    ("negative-step-size", _set("sampler.step_size", -1e-4), INVALID, "step_size"),
    ("nan-step-size", _set("sampler.step_size", float("nan")), INVALID, "step_size"),
    ("negative-gamma", _set("sampler.gamma", -1.0), INVALID, "gamma"),
    ("zero-chains", _set("sampler.chains", 0), INVALID, "chains"),
    ("chains-over-server-limit", _set("sampler.chains", 300), INVALID, "--max-chains"),
    ("absurd-draws", _set("sampler.draws", 10**12), INVALID, "draws"),
    ("draws-over-server-limit", _set("sampler.draws", 6_000_000), INVALID, "--max-total-draws"),
    ("zero-steps-between-draws", _set("sampler.steps_between_draws", 0), INVALID, "steps_between_draws"),
    ("rmsprop-alpha-one", _set("sampler.rmsprop_alpha", 1.0), INVALID, "rmsprop_alpha"),
    ("unknown-sampler-dtype", _set("sampler.dtype", 99), INVALID, "dtype"),
    ("auto-sampler-dtype", _set("sampler.dtype", pb.DTYPE_AUTO), INVALID, "dtype"),
    ("unknown-model-path", _set("model.local_path", "missing"), NOT_FOUND, "does not exist"),
    ("model-dir-without-config", _set("model.local_path", "empty_model"), NOT_FOUND, "config.json"),
    ("unknown-dataset-file", lambda s, f: s.dataset.files.__setitem__(0, f["missing"]), NOT_FOUND, "files[0]"),
    ("context-length-one", _set("dataset.context_length", 1), INVALID, "context_length"),
    ("batch-size-zero", _set("batch_size", 0), INVALID, "batch_size"),
    ("fractional-multi-gpu", _set("compute.gpus_per_chain", 1.5), INVALID, "whole number"),
    ("head-without-layer", lambda s, f: s.restrictions.add(name="h", weights=[pb.WeightSelector(
        kind=pb.SELECTOR_KIND_HEAD, head=1)]), INVALID, "restrictions[0].weights[0].layer"),
    ("bad-regex", lambda s, f: s.restrictions.add(name="r", weights=[pb.WeightSelector(
        kind=pb.SELECTOR_KIND_REGEX, pattern="(")]), INVALID, "regular expression"),
    ("pattern-without-pattern", lambda s, f: s.restrictions.add(name="p", weights=[pb.WeightSelector()]),
     INVALID, "pattern"),
    ("restriction-name-with-space", lambda s, f: s.restrictions.add(name="my head"), INVALID, "name"),
    ("duplicate-restriction-names", lambda s, f: s.restrictions.extend([pb.Restriction(name="a"),
                                                                        pb.Restriction(name="a")]), INVALID, "unique"),
    ("restriction-dataset-missing-file", lambda s, f: s.restrictions.add(name="d", dataset=pb.DatasetRef(
        files=[f["missing"]])), NOT_FOUND, "restrictions[0].dataset.files[0]"),
]


@pytest.mark.parametrize("mutate,code,fragment", [b[1:] for b in BAD_SPECS], ids=[b[0] for b in BAD_SPECS])
def test_bad_create_requests(stub, files, mutate, code, fragment):
    spec = valid_spec(files)
    mutate(spec, files)
    got, message = code_of(stub[0].CreateEstimate, pb.CreateEstimateRequest(request_id="r", spec=spec))
    assert got == code, message
    assert fragment in message
    assert_serving(stub)


def test_missing_spec_and_long_request_id(stub, files):
    assert code_of(stub[0].CreateEstimate, pb.CreateEstimateRequest()) == (INVALID, "spec is missing: give at least "
                                                                                    "spec.model and spec.dataset")
    got, message = code_of(stub[0].CreateEstimate, pb.CreateEstimateRequest(request_id="x" * 200, spec=valid_spec(files)))
    assert got == INVALID and "request_id" in message
    assert_serving(stub)


def test_oversized_request_is_resource_exhausted(stub, files):
    spec = valid_spec(files)
    spec.dataset.files.extend(["/x" * 1000] * 600)  # ~1.2 MB > 1 MiB default
    got, message = code_of(stub[0].CreateEstimate, pb.CreateEstimateRequest(spec=spec))
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-request-bytes" in message
    assert_serving(stub)


def test_valid_request_without_ray_is_unavailable_and_not_stored(server, stub, files):
    got, message = code_of(stub[0].CreateEstimate, pb.CreateEstimateRequest(request_id="r1", spec=valid_spec(files)))
    assert got == grpc.StatusCode.UNAVAILABLE and "--ray-dashboard" in message
    got, message = code_of(stub[0].PreviewRestrictions, pb.PreviewRestrictionsRequest(spec=valid_spec(files)))
    assert got == grpc.StatusCode.UNAVAILABLE and "--ray-dashboard" in message
    spec = valid_spec(files)
    spec.model.local_path = files["missing"]  # previews are validated like estimates
    assert code_of(stub[0].PreviewRestrictions, pb.PreviewRestrictionsRequest(spec=spec))[0] == NOT_FOUND
    assert server.server.store.list()[0] == []
    assert_serving(stub)


@pytest.mark.parametrize("call,request_,code,fragment", [
    ("GetEstimate", pb.GetEstimateRequest(estimate_id="est-unknown"), NOT_FOUND, "ListEstimates"),
    ("GetEstimate", pb.GetEstimateRequest(), INVALID, "estimate_id is empty"),
    ("CancelEstimate", pb.CancelEstimateRequest(estimate_id="est-unknown"), NOT_FOUND, "no estimate"),
    ("WatchEstimate", pb.WatchEstimateRequest(estimate_id="est-unknown"), NOT_FOUND, "no estimate"),
    ("ListEstimates", pb.ListEstimatesRequest(page_size=100000), INVALID, "page_size"),
    ("ListEstimates", pb.ListEstimatesRequest(page_token="garbage"), INVALID, "page_token"),
    ("ListEstimates", pb.ListEstimatesRequest(states=[42]), INVALID, "states"),
    ("PreviewRestrictions", pb.PreviewRestrictionsRequest(), INVALID, "spec is missing"),
])
def test_bad_requests_to_other_methods(stub, call, request_, code, fragment):
    got, message = code_of(getattr(stub[0], call), request_)
    assert got == code and fragment in message, message
    assert_serving(stub)


def _stored(server, job_id, owner="tester", state=JobState.QUEUED, request_id="", fingerprint="fp"):
    store = server.server.store
    store.create(JobRecord(id=job_id, owner=owner, request_id=request_id, fingerprint=fingerprint,
                           spec_json=json.dumps({"job_id": job_id, "sampler": {"chains": 2, "draws": 10}})))
    if state != JobState.QUEUED:
        store.transition(job_id, state, error_code="X" if state == JobState.FAILED else "")
    return job_id


def test_cancelling_a_finished_estimate_is_failed_precondition(server, stub):
    _stored(server, "est-done", state=JobState.FAILED)
    got, message = code_of(stub[0].CancelEstimate, pb.CancelEstimateRequest(estimate_id="est-done"))
    assert got == grpc.StatusCode.FAILED_PRECONDITION and "already ended (FAILED)" in message
    assert_serving(stub)


def test_request_id_reused_for_another_spec_is_failed_precondition(server, stub, files):
    _stored(server, "est-1", request_id="same-key", fingerprint="something else")
    got, message = code_of(stub[0].CreateEstimate, pb.CreateEstimateRequest(request_id="same-key", spec=valid_spec(files)))
    assert got == grpc.StatusCode.FAILED_PRECONDITION and "new request_id" in message


def test_too_many_active_estimates_per_client_is_resource_exhausted(server, stub, files):
    for i in range(3):
        _stored(server, f"est-{i}")
    _stored(server, "est-other-client", owner="someone-else")
    got, message = code_of(stub[0].CreateEstimate, pb.CreateEstimateRequest(spec=valid_spec(files)))
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED and "'tester' already has 3" in message
    # Another client is not limited by tester's estimates (it reaches the Ray check instead).
    got, _ = code_of(stub[0].CreateEstimate, pb.CreateEstimateRequest(spec=valid_spec(files)),
                     metadata=[("llc-client-id", "fresh")])
    assert got == grpc.StatusCode.UNAVAILABLE


def test_get_list_and_watch_a_stored_estimate(server, stub):
    for i in range(5):
        _stored(server, f"est-{i}", state=JobState.SUCCEEDED if i % 2 else JobState.QUEUED)
    llc = stub[0]
    got = llc.GetEstimate(pb.GetEstimateRequest(estimate_id="est-1"), metadata=CLIENT).estimate
    assert got.state == pb.ESTIMATE_STATE_SUCCEEDED and got.spec.sampler.chains == 2 and got.owner == "tester"
    ids, token = [], ""
    while True:
        page = llc.ListEstimates(pb.ListEstimatesRequest(page_size=2, page_token=token), metadata=CLIENT)
        ids += [e.estimate_id for e in page.estimates]
        token = page.next_page_token
        if not token:
            break
    assert sorted(ids) == [f"est-{i}" for i in range(5)] and len(ids) == 5
    done = llc.ListEstimates(pb.ListEstimatesRequest(states=[pb.ESTIMATE_STATE_SUCCEEDED]), metadata=CLIENT)
    assert {e.estimate_id for e in done.estimates} == {"est-1", "est-3"}
    # Watching a finished estimate: one snapshot, then the stream ends.
    msgs = list(llc.WatchEstimate(pb.WatchEstimateRequest(estimate_id="est-3"), metadata=CLIENT, timeout=10))
    assert len(msgs) == 1 and msgs[0].snapshot.state == pb.ESTIMATE_STATE_SUCCEEDED


def test_client_deadlines_leave_the_server_healthy(server, stub, files):
    _stored(server, "est-q")
    llc = stub[0]
    # A watch of an unfinished estimate outlives a short deadline: the client gives up, the server cleans up.
    got, _ = code_of(llc.WatchEstimate, pb.WatchEstimateRequest(estimate_id="est-q"), timeout=0.5)
    assert got == grpc.StatusCode.DEADLINE_EXCEEDED
    # A create whose deadline passes mid-call stores nothing half-done (here Ray is down, too).
    got, _ = code_of(llc.CreateEstimate, pb.CreateEstimateRequest(spec=valid_spec(files)), timeout=0.01)
    assert got in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    assert [r.id for r in server.server.store.list()[0]] == ["est-q"]
    assert_serving(stub)


def test_health_and_reflection(server, stub):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    assert stub[1].Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(server.address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"llc.v1.LLCService", "grpc.health.v1.Health"} <= services
    # grpc.reflection.v1 too (current grpcurl asks it first): the same messages under another name.
    from grpc_reflection.v1alpha import reflection_pb2 as r

    with grpc.insecure_channel(server.address) as channel:
        info = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                     request_serializer=r.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=r.ServerReflectionResponse.FromString)
        listed, symbol = info(iter([r.ServerReflectionRequest(list_services=""),
                                    r.ServerReflectionRequest(file_containing_symbol="llc.v1.LLCService")]), timeout=10)
    v1_services = {s.name for s in listed.list_services_response.service}
    assert {"llc.v1.LLCService", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} \
        <= v1_services
    assert symbol.file_descriptor_response.file_descriptor_proto, symbol


def test_with_a_token_unauthenticated_calls_are_refused(make_server):
    server = make_server(token="s3cret")
    with grpc.insecure_channel(server.address) as channel:
        llc, health = llc_pb2_grpc.LLCServiceStub(channel), health_pb2_grpc.HealthStub(channel)
        for metadata in (CLIENT, CLIENT + [("authorization", "Bearer wrong")], CLIENT + [("authorization", "s3cret")]):
            for call, request_ in ((llc.GetEstimate, pb.GetEstimateRequest(estimate_id="x")),
                                   (llc.ListEstimates, pb.ListEstimatesRequest()),
                                   (llc.WatchEstimate, pb.WatchEstimateRequest(estimate_id="x"))):
                got, message = code_of(call, request_, metadata=metadata)
                assert got == grpc.StatusCode.UNAUTHENTICATED and "token" in message
        ok = CLIENT + [("authorization", "Bearer s3cret")]
        assert code_of(llc.GetEstimate, pb.GetEstimateRequest(estimate_id="x"), metadata=ok)[0] == NOT_FOUND
        assert llc.ListEstimates(pb.ListEstimatesRequest(), metadata=ok).estimates == []
        # Probes need no credentials.
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING


def test_tls(make_server, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = make_server(tls_cert=str(cert), tls_key=str(key), token="t")
    from llc import Client
    from llc.errors import NotFound, Unavailable

    with Client(server.address, token="t", root_certificates=str(cert)) as client:
        with pytest.raises(NotFound):
            client.get("est-x")
    with Client(server.address, token="t", timeout=3) as plaintext:  # a plaintext client cannot talk to it
        with pytest.raises(Unavailable):
            plaintext.get("est-x")


def test_the_front_end_never_imports_torch():
    import sys as _sys

    code = ("import sys, service.server, service.serve, service.demo, service.runner, cluster.local_ray\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'deepspeed'})\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([_sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_server_runs_on_either_store_backend(make_server, store_url):
    url, kwargs = store_url
    server = make_server(store_url=url, store_schema=kwargs.get("schema", "llc"))
    _stored(server, "est-a", state=JobState.RUNNING)
    with grpc.insecure_channel(server.address) as channel:
        llc = llc_pb2_grpc.LLCServiceStub(channel)
        got = llc.GetEstimate(pb.GetEstimateRequest(estimate_id="est-a"), metadata=CLIENT, timeout=10).estimate
        assert got.state == pb.ESTIMATE_STATE_RUNNING and got.start_time.seconds > 0
        listed = llc.ListEstimates(pb.ListEstimatesRequest(), metadata=CLIENT, timeout=10).estimates
        assert [e.estimate_id for e in listed] == ["est-a"]


def test_watch_replays_a_long_history_in_order_then_the_final_snapshot(server, stub, monkeypatch):
    import service.servicer

    monkeypatch.setattr(service.servicer, "EVENT_PAGE", 7)  # several pages
    _stored(server, "est-long")
    store = server.server.store
    store.add_events("est-long", [{"type": "progress", "seq": i, "time": 1.0, "restriction": "full", "chain": 0,
                                   "step": i, "total_steps": 30, "llc_running": 0.1} for i in range(30)])
    store.transition("est-long", JobState.RUNNING)
    store.transition("est-long", JobState.SUCCEEDED, result={"restrictions": []})
    msgs = list(stub[0].WatchEstimate(pb.WatchEstimateRequest(estimate_id="est-long", after_seq=4), metadata=CLIENT,
                                      timeout=10))
    # The replay first, in seq order, then the one terminal snapshot (seq never goes backwards).
    assert [m.seq for m in msgs[:-1]] == list(range(5, 30)) and msgs[4].progress.step == 9
    assert [m.WhichOneof("event") for m in msgs].count("snapshot") == 1 and msgs[-1].seq == 29
    assert msgs[-1].snapshot.state == pb.ESTIMATE_STATE_SUCCEEDED


def test_a_watch_sees_changes_another_front_end_writes_to_the_shared_store(make_server):
    """Two front ends on one store: what one stores, watchers on the other see (by re-reading
    the store every watch_poll_s), first the snapshot, then events, then the end."""
    import threading

    server = make_server(watch_poll_s=0.2)
    _stored(server, "est-shared")
    received = []
    with grpc.insecure_channel(server.address) as channel:
        llc = llc_pb2_grpc.LLCServiceStub(channel)
        stream = llc.WatchEstimate(pb.WatchEstimateRequest(estimate_id="est-shared"), metadata=CLIENT, timeout=30)
        first = threading.Event()

        def read():
            for msg in stream:
                received.append(msg)
                first.set()

        reader = threading.Thread(target=read)
        reader.start()
        assert first.wait(10)  # the watch is open (its first snapshot arrived) before anything changes
        other = __import__("service.store", fromlist=["open_store"]).open_store(server.server.config.store_url)
        try:
            other.add_events("est-shared", [{"type": "started", "seq": 0, "time": 1.0, "chains_total": 2,
                                             "restrictions": ["full"]}])
            other.transition("est-shared", JobState.RUNNING)
            other.add_events("est-shared", [{"type": "chain", "seq": 1, "time": 1.0, "restriction": "full",
                                             "chain": 0, "status": "succeeded", "llc": 1.0}])
            other.transition("est-shared", JobState.CANCELLED, error_code="CANCELLED", error_message="by test")
        finally:
            other.close()
        reader.join(20)
    kinds = [m.WhichOneof("event") for m in received]
    assert kinds[0] == "snapshot" and "started" in kinds and "chain" in kinds and kinds[-1] == "snapshot"
    assert received[-1].snapshot.state == pb.ESTIMATE_STATE_CANCELLED and received[-1].snapshot.error.message == "by test"


def test_a_port_in_use_is_a_clear_error(make_server, tmp_path, dead_ray_url):
    import socket

    from cluster.contract.errors import Unavailable
    from service.config import ServerConfig
    from service.server import BackgroundServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(Unavailable, match=f"cannot listen on 127.0.0.1:{port}.*--listen"):
            BackgroundServer(ServerConfig(address=f"127.0.0.1:{port}", store_url=str(tmp_path / "j.sqlite"),
                                          ray_dashboard_url=dead_ray_url)).start()
