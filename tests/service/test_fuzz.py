"""Fuzzing a real llc.v1 server on 127.0.0.1: hypothesis builds malformed requests for every
method from the proto descriptors (hostile strings, extreme numbers, unknown enum values,
deep and wide messages) and raw bytes that are no message at all. Every one must get a
specific status, never INTERNAL or UNKNOWN, and the server must answer health checks after.

The server has no Ray cluster (a dead job API): requests that pass validation get UNAVAILABLE."""
from __future__ import annotations

import collections
import json

import grpc
import pytest
from google.protobuf import descriptor as gdesc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llc.v1 import llc_pb2 as pb
from service.config import ServerConfig
from service.server import BackgroundServer

SERVICE = pb.DESCRIPTOR.services_by_name["LLCService"]
METHODS = {m.name: m for m in SERVICE.methods}
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
NASTY = ["", "../../../../etc/shadow", "/etc/passwd", "/etc/*", "~root/.ssh/id_rsa", "x" * 300_000, "\0", "é" * 3000,
         r"^(([a-z_.0-9])+)+X$", "(", "[[[[", "*", "est-" + "0" * 16, "gpt2", "owner/name", "%s%n", "\u202e\ufeff",
         "a" * 129, "LLC_EVENT {}", "W1sxLDFdXQ=="]
MAX_DEPTH = 3
EXAMPLES = 200  # structured requests; the nearly valid and raw-bytes corpora add 226 more
_INT_RANGES = {
    gdesc.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), gdesc.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    gdesc.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), gdesc.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    gdesc.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), gdesc.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    gdesc.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1), gdesc.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    gdesc.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), gdesc.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def scalar(field: gdesc.FieldDescriptor) -> st.SearchStrategy:
    t = field.type
    if t == gdesc.FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(NASTY), st.text(max_size=40))
    if t == gdesc.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == gdesc.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (gdesc.FieldDescriptor.TYPE_DOUBLE, gdesc.FieldDescriptor.TYPE_FLOAT):
        return st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32 if t == field.TYPE_FLOAT else 64),
                         st.sampled_from([0.0, -0.0, 1e-300, 1e300, -1.0]))
    if t == gdesc.FieldDescriptor.TYPE_ENUM:  # proto3 enums are open: unknown numbers arrive as numbers
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-3, 1000))
    lo, hi = _INT_RANGES[t]
    return st.one_of(st.integers(lo, hi), st.sampled_from([0, 1, -1, lo, hi]).filter(lambda v: lo <= v <= hi))


@st.composite
def message(draw, descriptor: gdesc.Descriptor, depth: int = 0):
    """A message of `descriptor` with a random subset of its fields set to hostile values."""
    from google.protobuf import message_factory

    msg = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.type == gdesc.FieldDescriptor.TYPE_MESSAGE:
            if depth >= MAX_DEPTH or field.message_type.full_name.startswith("google.protobuf."):
                continue
            values = draw(st.lists(message(field.message_type, depth + 1), max_size=3)) \
                if field.is_repeated else [draw(message(field.message_type, depth + 1))]
            for value in values:
                (getattr(msg, field.name).add() if field.is_repeated else getattr(msg, field.name)).CopyFrom(value)
            continue
        if field.is_repeated:
            getattr(msg, field.name).extend(draw(st.lists(scalar(field), max_size=4)))
        else:
            setattr(msg, field.name, draw(scalar(field)))
    return msg


def requests() -> st.SearchStrategy:
    return st.sampled_from(sorted(METHODS)).flatmap(
        lambda name: st.tuples(st.just(name), message(METHODS[name].input_type)))


def _garbled(data: bytes, cuts: list[int], flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for i, value in flips:
        if out:
            out[i % len(out)] = value
    for c in cuts:
        out = out[: c % (len(out) + 1)]
    return bytes(out)


def raw_bodies() -> st.SearchStrategy:
    """Bytes that are mostly not a message: random, truncated or bit-flipped serializations,
    wrong wire types, invalid UTF-8 in string fields, and deep nesting."""
    serialized = requests().map(lambda r: r[1].SerializeToString())
    return st.one_of(
        st.binary(max_size=200),
        st.tuples(serialized, st.lists(st.integers(0, 10_000), max_size=1),
                  st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4)
                  ).map(lambda t: _garbled(*t)),
        st.sampled_from([b"\x0a\x03\xff\xfe\xfd",  # field 1 (a string) with invalid UTF-8
                         b"\x0a" * 5000,  # nested length prefixes that never close
                         b"\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # an overlong varint length
                         b"\x0b\x0c" * 100, b"\x08" + b"\xff" * 11])).filter(bool)


@st.composite
def near_valid(draw, root: str) -> pb.CreateEstimateRequest:
    """A valid request with one part replaced by a generated one, so checks past the first
    (paths, policy, the model's config, columns, limits) are reached too."""
    spec = pb.EstimateSpec()
    spec.model.local_path = f"{root}/model"
    spec.dataset.files.append(f"{root}/train.jsonl")
    spec.dataset.context_length = 16
    spec.sampler.chains, spec.sampler.draws = 2, 10
    generated = draw(message(pb.EstimateSpec.DESCRIPTOR))
    part = draw(st.sampled_from(["model", "dataset", "sampler", "compute", "restrictions"]))
    if part == "restrictions":
        spec.restrictions.extend(generated.restrictions)
    else:
        getattr(spec, part).MergeFrom(getattr(generated, part))
    return pb.CreateEstimateRequest(spec=spec)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_head": 4}))
    (root / "train.jsonl").write_text(json.dumps({"text": "the cat sat"}) + "\n")
    from cluster.local_ray import free_port

    srv = BackgroundServer(ServerConfig(address="127.0.0.1:0", store_url=str(root / "jobs.sqlite"),
                                        ray_dashboard_url=f"http://127.0.0.1:{free_port()}", submit_retry_s=1.0,
                                        allowed_roots=(str(root),))).start()
    yield srv
    srv.stop()


def _code(channel: grpc.Channel, name: str, body) -> grpc.StatusCode:
    method = METHODS[name]
    path = f"/{SERVICE.full_name}/{name}"
    serialize = (lambda m: m.SerializeToString()) if not isinstance(body, bytes) else None
    try:
        if method.server_streaming:
            for _ in channel.unary_stream(path, request_serializer=serialize)(body, timeout=5):
                pass  # a watch of a queued estimate would not end: the deadline ends it (not an error code)
        else:
            channel.unary_unary(path, request_serializer=serialize)(body, timeout=15)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        assert exc.code() not in BAD_CODES, (name, exc.code(), exc.details()[:500])
        return exc.code()


def _assert_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE.full_name):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING


FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                       HealthCheck.function_scoped_fixture])


def test_generated_malformed_requests_get_specific_codes(server):
    codes: collections.Counter = collections.Counter()
    with grpc.insecure_channel(server.address) as channel:
        @FUZZ
        @given(requests())
        def one(request):
            name, msg = request
            codes[(name, _code(channel, name, msg))] += 1

        one()
        _assert_serving(channel)
    assert sum(codes.values()) >= 200, codes
    assert {name for name, _ in codes} == set(METHODS)  # every method was fuzzed
    assert {code for _, code in codes} & {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


def test_nearly_valid_creates_reach_the_deeper_checks_and_get_specific_codes(server):
    codes: collections.Counter = collections.Counter()
    root = server.server.config.allowed_roots[0]
    with grpc.insecure_channel(server.address) as channel:
        @settings(FUZZ, max_examples=100)
        @given(near_valid(root))
        def one(request):
            codes[_code(channel, "CreateEstimate", request)] += 1

        one()
        _assert_serving(channel)
    assert sum(codes.values()) >= 100, codes
    # Some pass every check (UNAVAILABLE: no Ray here), others are refused past the spec's own checks.
    assert {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT} <= set(codes), codes


def test_bytes_that_are_no_message_get_invalid_argument(server):
    codes: collections.Counter = collections.Counter()
    with grpc.insecure_channel(server.address) as channel:
        @settings(FUZZ, max_examples=120)
        @given(st.sampled_from(sorted(METHODS)), raw_bodies())
        def one(name, body):
            codes[_code(channel, name, body)] += 1

        one()
        for name, method in METHODS.items():  # invalid UTF-8 in a string (or message) field: undecodable
            field = next(f for f in method.input_type.fields if f.type in (f.TYPE_STRING, f.TYPE_MESSAGE))
            body = bytes([field.number << 3 | 2]) + b"\x03\xff\xfe\xfd"
            assert _code(channel, name, body) == grpc.StatusCode.INVALID_ARGUMENT, name
        with pytest.raises(grpc.RpcError) as garbled_probe:  # health's own methods are guarded too
            channel.unary_unary("/grpc.health.v1.Health/Check")(b"\x0a\x03\xff\xfe\xfd", timeout=5)
        assert garbled_probe.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        _assert_serving(channel)
    assert sum(codes.values()) >= 100 and grpc.StatusCode.INVALID_ARGUMENT in codes, codes
