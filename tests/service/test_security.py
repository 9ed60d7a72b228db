"""A hostile client against a real llc.v1 server on 127.0.0.1 (service/policy.py, preflight.py):
no code execution unless the server allows it, local paths confined to the allowed roots
without revealing what exists outside them, regexes that cannot hang, early validation from
the model's config and the dataset's first rows, and error messages that stay small.

The servers here have no Ray cluster (a dead job API): a request that passes every check
gets UNAVAILABLE, so "UNAVAILABLE" below means "accepted", and any other code means it was
refused before a Ray job could start. The slow test at the end uses a real Ray."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llc.v1 import llc_pb2 as pb
from llc.v1 import llc_pb2_grpc
from tests.helm.test_chart import helm  # noqa: F401 (the session fixture that fetches the helm binary)

ACCEPTED, INVALID, NOT_FOUND = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
BOMB = r"^(([a-z_.0-9])+)+X$"  # exponential for a backtracking engine on any long parameter name
MB = 1 << 20
HUGE = 1_000_000  # characters: a request stays under the 1 MiB --max-request-bytes


@pytest.fixture
def root(tmp_path):
    """The one directory the server allows, with a model and data; `outside` is next to it."""
    r = tmp_path / "root"
    (r / "model").mkdir(parents=True)
    (r / "model" / "config.json").write_text("{}")
    (r / "train.jsonl").write_text(json.dumps({"text": "the cat sat"}) + "\n")
    (tmp_path / "outside").mkdir()
    return r


def spec_for(model: str, data: str) -> pb.EstimateSpec:
    spec = pb.EstimateSpec()
    spec.model.local_path = str(model)
    spec.dataset.files.append(str(data))
    spec.sampler.chains, spec.sampler.draws = 2, 10
    return spec


def call(server, method: str, request, timeout: float = 10) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(server.address, options=[("grpc.max_metadata_size", 16 << 10)]) as channel:
        stub = llc_pb2_grpc.LLCServiceStub(channel)
        try:
            result = getattr(stub, method)(request, timeout=timeout)
            if method == "WatchEstimate":
                list(result)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            return exc.code(), exc.details()


def create(server, spec: pb.EstimateSpec) -> tuple[grpc.StatusCode, str]:
    return call(server, "CreateEstimate", pb.CreateEstimateRequest(spec=spec))


def assert_serving(server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="llc.v1.LLCService"),
                                                           timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------------ remote code
def test_remote_code_is_refused_unless_the_deployment_allows_it(make_server, root):
    spec = spec_for(root / "model", root / "train.jsonl")
    spec.model.trust_remote_code = True
    strict = make_server(allowed_roots=(str(root),))
    got, message = create(strict, spec)
    assert got == DENIED and "trust_remote_code" in message and "--allow-remote-code" in message
    got, _ = call(strict, "PreviewRestrictions", pb.PreviewRestrictionsRequest(spec=spec))
    assert got == DENIED
    assert strict.server.config.driver_env["LLC_ALLOW_REMOTE_CODE"] == "0"  # the driver is told, too
    allowing = make_server(allowed_roots=(str(root),), allow_remote_code=True)
    assert create(allowing, spec)[0] == ACCEPTED
    assert allowing.server.config.driver_env["LLC_ALLOW_REMOTE_CODE"] == "1"
    assert_serving(strict)


def test_the_driver_refuses_remote_code_unless_its_job_allows_it(tiny_gpt2_dir, monkeypatch):
    from cluster.contract.errors import PermissionDenied
    from cluster.models import load_model
    from cluster.contract.spec import ModelRef

    ref = ModelRef(local_path=str(tiny_gpt2_dir), trust_remote_code=True)
    for value in (None, "0", "true"):
        if value is None:
            monkeypatch.delenv("LLC_ALLOW_REMOTE_CODE", raising=False)
        else:
            monkeypatch.setenv("LLC_ALLOW_REMOTE_CODE", value)
        with pytest.raises(PermissionDenied, match="trust_remote_code"):
            load_model(ref)
    monkeypatch.setenv("LLC_ALLOW_REMOTE_CODE", "1")
    assert load_model(ref).architecture == "gpt2"


# ------------------------------------------------------------------ local paths
def test_paths_outside_the_roots_are_refused_alike_whether_they_exist_or_not(make_server, root, tmp_path):
    server = make_server(allowed_roots=(str(root),))
    data = root / "train.jsonl"
    secret = tmp_path / "outside" / "secret.jsonl"
    (root / "link").symlink_to(tmp_path / "outside")  # a symlink inside the root that leads out
    answers = {}
    for exists in (True, False):
        if exists:
            secret.write_text(json.dumps({"text": "private"}) + "\n")
            (tmp_path / "outside" / "model").mkdir()
            (tmp_path / "outside" / "model" / "config.json").write_text("{}")
        else:
            secret.unlink()
            (tmp_path / "outside" / "model" / "config.json").unlink()
            (tmp_path / "outside" / "model").rmdir()
        answers[exists] = [
            create(server, spec_for(root / "model", secret)),
            create(server, spec_for(tmp_path / "outside" / "model", data)),
            create(server, spec_for(root / "model", f"{root}/../outside/secret.jsonl")),  # '..' out of the root
            create(server, spec_for(root / "model", root / "link" / "secret.jsonl")),  # symlink out of the root
            create(server, spec_for(root / "link" / "model", data)),
        ]
    assert answers[True] == answers[False]  # word for word: nothing outside the roots is revealed
    for got, message in answers[True]:
        assert got == DENIED and "outside the directories this server reads" in message and str(root) in message
    assert "spec.dataset.files[0]" in answers[True][0][1] and "spec.model.local_path" in answers[True][1][1]
    # Only inside the roots does a missing file say so.
    got, message = create(server, spec_for(root / "model", root / "missing.jsonl"))
    assert got == NOT_FOUND and "does not exist" in message
    assert create(server, spec_for(root / "model", data))[0] == ACCEPTED
    assert_serving(server)


def test_relative_paths_and_escaping_globs_are_refused(make_server, root, tmp_path):
    server = make_server(allowed_roots=(str(root),))
    for relative in ("../../../../etc/shadow", "train.jsonl", "~/train.jsonl"):
        got, message = create(server, spec_for(root / "model", relative))
        assert got == INVALID and "relative path" in message, message
    got, message = create(server, spec_for("model", root / "train.jsonl"))
    assert got == INVALID and "spec.model.local_path" in message
    # A glob is checked match by match: one symlink leading out is enough to refuse it.
    (root / "data").mkdir()
    (root / "data" / "a.jsonl").write_text(json.dumps({"text": "a b"}) + "\n")
    assert create(server, spec_for(root / "model", f"{root}/data/*.jsonl"))[0] == ACCEPTED
    (tmp_path / "outside" / "b.jsonl").write_text(json.dumps({"text": "secret"}) + "\n")
    (root / "data" / "b.jsonl").symlink_to(tmp_path / "outside" / "b.jsonl")
    assert create(server, spec_for(root / "model", f"{root}/data/*.jsonl"))[0] == DENIED
    assert create(server, spec_for(root / "model", "/etc/*"))[0] == DENIED
    # Restriction datasets are confined like the main one.
    spec = spec_for(root / "model", root / "train.jsonl")
    spec.restrictions.add(name="r", dataset=pb.DatasetRef(files=["/etc/passwd"]))
    got, message = create(server, spec)
    assert got == DENIED and "spec.restrictions[0].dataset.files[0]" in message
    nul = spec_for(root / "model", f"{root}/train.jsonl\0.txt")
    assert create(server, nul)[0] == INVALID


def test_a_server_without_roots_reads_no_local_files(make_server, root):
    from llc import Client
    from llc.errors import PermissionDenied

    server = make_server(allowed_roots=())
    got, message = create(server, spec_for(root / "model", root / "train.jsonl"))
    assert got == DENIED and "hub id" in message
    with Client(server.address) as client, pytest.raises(PermissionDenied):  # the SDK's own error type
        client.submit(str(root / "model"), str(root / "train.jsonl"))


def test_a_front_end_that_cannot_see_the_cluster_files_still_confines_paths(make_server, root, tmp_path):
    server = make_server(allowed_roots=(str(root),), check_local_paths=False)
    assert create(server, spec_for(root / "model", root / "only-on-the-nodes.jsonl"))[0] == ACCEPTED
    assert create(server, spec_for(root / "model", f"{root}/../outside/x.jsonl"))[0] == DENIED
    assert create(server, spec_for(tmp_path / "outside", root / "train.jsonl"))[0] == DENIED


def test_a_hub_model_in_the_local_cache_is_checked_early(tmp_path):
    """A hub id whose config.json is in the Hugging Face cache gets the same early checks (no network)."""
    snapshot = tmp_path / "hub" / "models--owner--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "num_hidden_layers": 2,
                                                      "num_attention_heads": 4, "max_position_embeddings": 64}))
    (tmp_path / "hub" / "models--owner--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--owner--tiny" / "refs" / "main").write_text("a" * 40)
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": "a b c"}) + "\n")
    code = f"""
from llc.v1 import llc_pb2 as pb
from cluster.contract.errors import InvalidArgument
from cluster.contract.spec import JobSpec
from service import convert
from service.config import ServerConfig
from service.policy import SubmissionPolicy
policy = SubmissionPolicy(ServerConfig(ray_dashboard_url="http://127.0.0.1:1", allowed_roots=({str(tmp_path)!r},)))
spec = pb.EstimateSpec()
spec.model.hub_id = "owner/tiny"
spec.dataset.files.append({str(tmp_path / "train.jsonl")!r})
job = JobSpec.from_dict(convert.spec_to_dict(spec, "est-x"))
policy.admit(job, spec)
assert job.dataset.context_length == 64, job.dataset.context_length
spec.restrictions.add(name="h", weights=[pb.WeightSelector(kind=pb.SELECTOR_KIND_HEAD, layer=0, head=4)])
try:
    policy.admit(JobSpec.from_dict(convert.spec_to_dict(spec, "est-y")), spec)
    raise SystemExit("head 4 of 4 was accepted")
except InvalidArgument as exc:
    assert "head 4 is out of range" in exc.message, exc.message
"""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr


def test_the_default_root_is_the_working_directory_or_llc_allowed_roots(monkeypatch, tmp_path):
    from service.config import ServerConfig

    monkeypatch.delenv("LLC_ALLOWED_ROOTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert ServerConfig(ray_dashboard_url="http://127.0.0.1:1").allowed_roots == (str(tmp_path.resolve()),)
    monkeypatch.setenv("LLC_ALLOWED_ROOTS", f"/data{os.pathsep}/models/../models")
    assert ServerConfig(ray_dashboard_url="http://127.0.0.1:1").allowed_roots == ("/data", "/models")
    monkeypatch.setenv("LLC_ALLOWED_ROOTS", "")  # set but empty: no local paths at all (the chart without storage)
    assert ServerConfig(ray_dashboard_url="http://127.0.0.1:1").allowed_roots == ()


@pytest.mark.parametrize("values,roots,remote_code", [
    ({}, "", False),
    ({"sharedStorage": {"enabled": True}}, "/data", False),
    ({"sharedStorage": {"enabled": True}, "frontend": {"policy": {"allowRemoteCode": True,
                                                                  "allowedRoots": ["/models", "/datasets"]}}},
     "/models:/datasets", True),
])
def test_the_chart_passes_the_policy_to_the_front_end(helm, tmp_path, monkeypatch, values, roots, remote_code):
    from llc.cli import build_parser
    from service.config import ServerConfig
    from tests.helm.test_chart import env_of, frontend, render

    objs = render(helm, tmp_path, values)
    container = frontend(objs)
    assert env_of(objs, container)["LLC_ALLOWED_ROOTS"] == roots
    args = build_parser().parse_args([*container["command"][1:], *container["args"]])
    assert args.allow_remote_code is remote_code and args.default_timeout == 86400 and args.preview_timeout == 300
    monkeypatch.setenv("LLC_ALLOWED_ROOTS", roots)
    config = ServerConfig(ray_dashboard_url="http://127.0.0.1:1", allow_remote_code=args.allow_remote_code)
    assert config.allowed_roots == tuple(r for r in roots.split(":") if r)


def test_the_chart_refuses_relative_roots(helm, tmp_path):
    from tests.helm.test_chart import helm_run

    out = helm_run(helm, tmp_path, "template", {"frontend": {"policy": {"allowedRoots": ["data"]}}})
    assert out.returncode != 0 and "allowedRoots" in out.stderr


# ------------------------------------------------------------------ regexes
def test_a_catastrophic_regex_is_answered_within_a_second(make_server, root, tiny_gpt2_dir):
    from cluster.contract.errors import InvalidArgument
    from cluster.models import load_model
    from cluster.restrictions import select_weights
    from cluster.contract.spec import ModelRef, WeightSelector

    server = make_server(allowed_roots=(str(root),))
    spec = spec_for(root / "model", root / "train.jsonl")
    assert create(server, spec)[0] == ACCEPTED  # once first: the server imports its Ray client (~1 s) on the first
    spec.restrictions.add(name="bomb", weights=[pb.WeightSelector(kind=pb.SELECTOR_KIND_REGEX, pattern=BOMB)])
    start = time.monotonic()
    got, _ = create(server, spec)
    assert got == ACCEPTED and time.monotonic() - start < 1.0  # RE2 accepts it: it cannot backtrack
    # On a worker: a real model's parameter names (Python's re would take 2^len(name) steps per name).
    loaded = load_model(ModelRef(local_path=str(tiny_gpt2_dir)))
    start = time.monotonic()
    with pytest.raises(InvalidArgument, match="selects no parameter"):
        select_weights(loaded.model, loaded.architecture, [WeightSelector(kind="regex", pattern=BOMB)])
    assert time.monotonic() - start < 1.0
    picked = select_weights(loaded.model, loaded.architecture, [WeightSelector(kind="regex", pattern=r"h\.0\..*attn")])
    assert picked.tensors and all(".h.0.attn" in t["name"] for t in picked.tensors)
    # What RE2 cannot do, and patterns too long, are refused at submission with the reason.
    for pattern, fragment in ((r"(?=attn)", "look-arounds"), (r"(a)\1", "back-references"), ("a" * 5000, "at most")):
        spec.restrictions[0].weights[0].pattern = pattern
        got, message = create(server, spec)
        assert got == INVALID and fragment in message and "restrictions[0].weights[0].pattern" in message


# ------------------------------------------------------------------ early validation
@pytest.fixture
def tiny_root(tiny_lm_dirs, text_jsonl, text_parquet, tokens_jsonl):
    """The directory that holds every session-scoped tiny model and dataset."""
    return os.path.commonpath([str(p) for p in (*tiny_lm_dirs.values(), text_jsonl, text_parquet, tokens_jsonl)])


def _with(spec: pb.EstimateSpec, **selector) -> pb.EstimateSpec:
    spec.restrictions.add(name="r", weights=[pb.WeightSelector(**selector)])
    return spec


@pytest.mark.parametrize("case", ["layer", "head-layer", "head", "attention", "context", "text-column", "ids-column",
                                  "parquet-column", "restriction-context", "unsupported-architecture"])
def test_mistakes_the_config_and_first_rows_show_are_refused_at_create(make_server, tiny_root, tiny_lm_dirs,
                                                                       text_jsonl, text_parquet, tokens_jsonl,
                                                                       tmp_path, case):
    gpt2 = tiny_lm_dirs["gpt2"]  # 2 layers, 4 heads, 64 positions
    spec = spec_for(gpt2, text_jsonl)
    spec.dataset.context_length = 32
    expect, fragment = INVALID, ""
    if case == "layer":
        _with(spec, kind=pb.SELECTOR_KIND_LAYER, layer=2)
        fragment = "restrictions[0].weights[0].layer: layer 2 is out of range; this model has layers 0..1"
    elif case == "head-layer":
        _with(spec, kind=pb.SELECTOR_KIND_HEAD, layer=7, head=0)
        fragment = "layer 7 is out of range"
    elif case == "head":
        _with(spec, kind=pb.SELECTOR_KIND_HEAD, layer=1, head=4)
        fragment = "weights[0].head: head 4 is out of range; layer 1 has heads 0..3"
    elif case == "attention":
        spec.model.local_path = str(tiny_lm_dirs["llama"])
        _with(spec, kind=pb.SELECTOR_KIND_ATTENTION, layer=9)
        fragment = "layers 0..1"
    elif case == "context":
        spec.dataset.context_length = 65
        fragment = "spec.dataset.context_length: 65 exceeds the model's maximum context length 64"
    elif case == "text-column":
        spec.dataset.text_column = "body"
        expect, fragment = NOT_FOUND, "spec.dataset.text_column: column 'body' is not in the dataset"
    elif case == "ids-column":
        spec.dataset.files[0] = str(tokens_jsonl)
        spec.dataset.input_ids_column = "ids"
        expect, fragment = NOT_FOUND, "columns are ['input_ids']"
    elif case == "parquet-column":
        spec.dataset.files[0] = str(text_parquet)
        spec.dataset.text_column = "content"
        expect, fragment = NOT_FOUND, "'content' is not in the dataset"
    elif case == "restriction-context":
        spec.restrictions.add(name="other", dataset=pb.DatasetRef(files=[str(text_jsonl)], context_length=100))
        fragment = "spec.restrictions[0].dataset.context_length: 100 exceeds"
    elif case == "unsupported-architecture":
        odd = tmp_path / "odd"
        odd.mkdir()
        (odd / "config.json").write_text(json.dumps({"model_type": "mamba", "num_hidden_layers": 2}))
        spec.model.local_path = str(odd)
        _with(spec, kind=pb.SELECTOR_KIND_MLP, layer=0)
        fragment = "has no semantic selectors"
    server = make_server(allowed_roots=(tiny_root, str(tmp_path)))
    start = time.monotonic()
    got, message = create(server, spec)
    assert got == expect and fragment in message, message
    assert time.monotonic() - start < 5  # config.json and a few rows, never a Ray job
    assert server.server.store.list()[0] == []


def test_what_the_config_allows_is_accepted_and_small_models_get_a_fitting_context(make_server, tiny_root,
                                                                                   tiny_lm_dirs, text_jsonl):
    from cluster.contract.spec import JobSpec
    from service import convert
    from service.policy import SubmissionPolicy

    server = make_server(allowed_roots=(tiny_root,), default_timeout_s=600)
    spec = spec_for(tiny_lm_dirs["gpt2"], text_jsonl)
    _with(spec, kind=pb.SELECTOR_KIND_HEAD, layer=1, head=3)
    assert create(server, spec)[0] == ACCEPTED  # the default context length 128 > 64 is no error
    job = JobSpec.from_dict(convert.spec_to_dict(spec, "est-x"))
    assert job.dataset.context_length == 128 and job.compute.timeout_s == 0
    SubmissionPolicy(server.server.config).admit(job, spec)
    assert job.dataset.context_length == 64  # min(128, max_position_embeddings)
    assert job.compute.timeout_s == 600  # the server's default job timeout, stored with the spec
    spec.compute.timeout_s = 30
    job = JobSpec.from_dict(convert.spec_to_dict(spec, "est-y"))
    SubmissionPolicy(server.server.config).admit(job, spec)
    assert job.compute.timeout_s == 30


def test_early_validation_keeps_torch_out_of_the_front_end(tiny_root, tiny_lm_dirs, text_parquet):
    code = f"""
import sys
from llc.v1 import llc_pb2 as pb
from cluster.contract.spec import JobSpec
from service import convert
from service.config import ServerConfig
from service.policy import SubmissionPolicy
spec = pb.EstimateSpec()
spec.model.local_path = {str(tiny_lm_dirs['gpt2'])!r}
spec.dataset.files.append({str(text_parquet)!r})
spec.restrictions.add(name="h", weights=[pb.WeightSelector(kind=pb.SELECTOR_KIND_HEAD, layer=0, head=1)])
policy = SubmissionPolicy(ServerConfig(ray_dashboard_url="http://127.0.0.1:1", allowed_roots=({tiny_root!r},)))
policy.admit(JobSpec.from_dict(convert.spec_to_dict(spec, "est-x")), spec)
hub = pb.EstimateSpec()
hub.CopyFrom(spec)
hub.model.hub_id = "EleutherAI/pythia-14m"
policy.admit(JobSpec.from_dict(convert.spec_to_dict(hub, "est-y")), hub)
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {{'torch', 'transformers', 'deepspeed'}})
assert not heavy, heavy
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# ------------------------------------------------------------------ bounded errors
def test_megabyte_inputs_get_their_real_error_in_a_small_message(make_server, root):
    server = make_server(allowed_roots=(str(root),))
    huge = "x" * HUGE
    cases = []
    spec = spec_for(root / "model", root / "train.jsonl")
    spec.model.local_path = "/" + huge
    cases.append(("CreateEstimate", pb.CreateEstimateRequest(spec=spec), INVALID, "model.local_path: is 1000001"))
    spec = spec_for(root / "model", root / "train.jsonl")
    spec.ClearField("model")
    spec.model.hub_id = huge
    cases.append(("CreateEstimate", pb.CreateEstimateRequest(spec=spec), INVALID, "model.hub_id: is 1000000"))
    spec = spec_for(root / "model", root / "train.jsonl")
    spec.restrictions.add(name=huge)
    cases.append(("CreateEstimate", pb.CreateEstimateRequest(spec=spec), INVALID, "restrictions[0].name"))
    spec = spec_for(root / "model", root / "train.jsonl")
    spec.dataset.text_column = "é" * (MB // 4)
    cases.append(("PreviewRestrictions", pb.PreviewRestrictionsRequest(spec=spec), INVALID, "text_column"))
    for method, cls in (("GetEstimate", pb.GetEstimateRequest), ("CancelEstimate", pb.CancelEstimateRequest),
                        ("WatchEstimate", pb.WatchEstimateRequest)):
        cases.append((method, cls(estimate_id=huge), INVALID, "estimate_id is 1000000 characters"))
    nested = base64.urlsafe_b64encode(b"[" * 100_000).decode()
    cases.append(("ListEstimates", pb.ListEstimatesRequest(page_token=nested), INVALID, "page_token"))
    cases.append(("ListEstimates", pb.ListEstimatesRequest(page_token=huge), INVALID, "page_token"))
    for method, request, code, fragment in cases:
        got, message = call(server, method, request)
        assert got == code and fragment in message, (method, got, message[:300])
        assert len(message.encode()) <= 4096, (method, len(message))
    assert_serving(server)


def test_messages_are_cut_in_the_middle_within_the_trailer_budget():
    from service.errors import _encoded_size, bounded

    assert bounded("short message") == "short message"
    long = "spec.x: " + repr("é\0" * MB) + "; give a shorter one"
    cut = bounded(long)
    assert sum(map(_encoded_size, cut)) <= 4096 and cut.startswith("spec.x: ") and cut.endswith("a shorter one")
    assert "characters cut" in cut


# ------------------------------------------------------------------ with a real Ray
@pytest.mark.slow
def test_preview_deadline_and_default_timeout_on_a_real_cluster(make_server, ray_head, tiny_root, tiny_lm_dirs,
                                                                text_jsonl):
    from ray.job_submission import JobSubmissionClient

    server = make_server(allowed_roots=(tiny_root,), ray_dashboard_url=ray_head.dashboard_url,
                         preview_timeout_s=2.0, default_timeout_s=900)
    spec = spec_for(tiny_lm_dirs["gpt2"], text_jsonl)
    spec.dataset.context_length = 16
    jobs = JobSubmissionClient(ray_head.dashboard_url)
    earlier = {j.submission_id for j in jobs.list_jobs()}  # the session's Ray serves other tests too
    start = time.monotonic()
    got, message = call(server, "PreviewRestrictions", pb.PreviewRestrictionsRequest(spec=spec), timeout=60)
    # The driver needs longer than 2 s to start workers and load the model: the server gives up by itself.
    assert got == grpc.StatusCode.DEADLINE_EXCEEDED and "--preview-timeout" in message, message
    assert time.monotonic() - start < 10
    # A deadline that falls during the submission itself: the job is stopped once it exists.
    hasty = make_server(allowed_roots=(tiny_root,), ray_dashboard_url=ray_head.dashboard_url, preview_timeout_s=0.001)
    got, _ = call(hasty, "PreviewRestrictions", pb.PreviewRestrictionsRequest(spec=spec), timeout=60)
    assert got == grpc.StatusCode.DEADLINE_EXCEEDED

    def ours():
        return [j for j in jobs.list_jobs()
                if (j.submission_id or "").startswith("llc-preview-") and j.submission_id not in earlier]

    # The hasty preview's submission lands when Ray's job API answers (it took over 2 s on a loaded
    # machine), or never, when the deadline fell before the server had even connected to Ray.
    landing = time.monotonic() + 20
    while len(previews := ours()) < 2 and time.monotonic() < landing:
        time.sleep(0.5)
    assert 1 <= len(previews) <= 2, previews
    deadline = time.monotonic() + 30
    while any(j.status not in ("STOPPED", "SUCCEEDED", "FAILED") for j in previews) and time.monotonic() < deadline:
        time.sleep(0.5)
        previews = [jobs.get_job_info(j.submission_id) for j in previews]
    assert previews and all(j.status in ("STOPPED", "SUCCEEDED", "FAILED") for j in previews)  # none left running
    # An estimate that sets no timeout gets the server's default, visible in its spec.
    with grpc.insecure_channel(server.address) as channel:
        stub = llc_pb2_grpc.LLCServiceStub(channel)
        est = stub.CreateEstimate(pb.CreateEstimateRequest(spec=spec), timeout=30).estimate
        try:
            assert est.spec.compute.timeout_s == 900
            stored = stub.GetEstimate(pb.GetEstimateRequest(estimate_id=est.estimate_id), timeout=10).estimate
            assert stored.spec.compute.timeout_s == 900 and stored.spec.dataset.context_length == 16
        finally:
            stub.CancelEstimate(pb.CancelEstimateRequest(estimate_id=est.estimate_id), timeout=30)


# ------------------------------------------------------------------ TLS mismatch, client side
def test_a_plaintext_tls_mismatch_says_so_on_the_client(make_server, tmp_path):
    from llc import Client
    from llc.errors import Unavailable

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    tls, plain = make_server(tls_cert=str(cert), tls_key=str(key)), make_server()
    for address, kwargs, fragment in (
            (tls.address, {}, "if it serves TLS, connect with TLS"),
            (plain.address, {"root_certificates": str(cert)}, "does not speak TLS: connect without TLS"),
            (tls.address, {"tls": True}, "not signed by a CA this client trusts: pass that CA")):
        with Client(address, timeout=3, **kwargs) as client, pytest.raises(Unavailable) as info:
            client.get("est-x")
        assert fragment in info.value.message, info.value.message
