"""The hub path through huggingface_hub itself, against a local stand-in of the hub's HTTP API
(tests/fixtures/hub.py on 127.0.0.1): revision → commit resolution, model and dataset downloads
through the product's loaders, the download cache, offline reuse of that cache, an estimate job on
a hub model, and the errors for unknown repositories and revisions, gated repositories and an
unreachable hub.

huggingface_hub, transformers and datasets read HF_ENDPOINT / HF_HUB_OFFLINE when imported, and the
suite runs offline (scripts/test), so loading runs in subprocesses with their own environment
(fixtures.hub.subprocess_env). resolve_commit alone runs in-process against huggingface_hub's
constants patched to the stand-in (it reads them per call).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cluster.contract.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable
from cluster.hub import content_hash, hashed_files, resolve_commit
from tests.fixtures.hub import subprocess_env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def online(hub, monkeypatch, tmp_path):
    """This process's huggingface_hub pointed at the stand-in, online, with an empty cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    return hub


def run_python(code: str, env: dict[str, str], timeout: float = 300) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line last, which is returned."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- resolution and errors (in-process) -----------------------------------------------------
def test_branches_resolve_to_their_commits(online):
    lm = online.commits["tiny/lm"]
    assert resolve_commit("tiny/lm", "main") == lm["main"]
    assert resolve_commit("tiny/lm", "step1") == lm["step1"]
    assert lm["main"] != lm["step1"]
    assert resolve_commit("tiny/lm", None) == resolve_commit("tiny/lm", "") == lm["main"]  # the default branch
    assert resolve_commit("tiny/lm", lm["step1"]) == lm["step1"]  # a commit resolves to itself
    texts = online.commits["tiny/texts"]
    assert resolve_commit("tiny/texts", "v2", repo_type="dataset") == texts["v2"] != texts["main"]
    assert online.count("GET", "/api/models/tiny/lm/revision/step1") >= 1
    assert online.count("GET", "/api/datasets/tiny/texts/revision/v2") == 1


def test_unknown_repository_and_revision_are_not_found(online):
    with pytest.raises(NotFound) as e:
        resolve_commit("tiny/nope", "main")
    assert e.value.code == "NOT_FOUND" and "'tiny/nope' not found on the hub" in e.value.message
    assert online.url in e.value.message and e.value.field == "model.hub_id"
    with pytest.raises(NotFound) as e:
        resolve_commit("tiny/lm", "step999")
    assert "has no revision 'step999'" in e.value.message and e.value.field == "model.revision"
    with pytest.raises(NotFound) as e:
        resolve_commit("tiny/lm", "0" * 40)  # a well-formed commit the repository does not have
    assert f"has no revision {'0' * 40!r}" in e.value.message
    with pytest.raises(NotFound) as e:
        resolve_commit("tiny/texts", "v9", repo_type="dataset")
    assert e.value.message.startswith("dataset 'tiny/texts' has no revision 'v9'")
    with pytest.raises(NotFound):
        resolve_commit("tiny/lm", "main", repo_type="dataset")  # a model is no dataset
    with pytest.raises(InvalidArgument):
        resolve_commit("tiny/lm", "main", repo_type="space")


def test_unreachable_hub_is_unavailable(online, monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(Unavailable) as e:
        resolve_commit("tiny/lm", "main")
    assert e.value.code == "UNAVAILABLE" and "cannot reach the Hugging Face hub" in e.value.message
    assert f"127.0.0.1:{port}" in e.value.message


def test_a_hub_that_never_answers_is_unavailable(online, monkeypatch):
    import threading

    import cluster.hub

    online.add_repo("model", "tiny/stuck", {"main": {"config.json": b"{}"}})
    release = threading.Event()
    online.repos[("model", "tiny/stuck")].hang = release
    monkeypatch.setattr(cluster.hub, "RESOLVE_TIMEOUT_S", 0.2)
    try:
        with pytest.raises(Unavailable) as e:
            resolve_commit("tiny/stuck", "main")
    finally:
        release.set()
    assert "cannot reach the Hugging Face hub" in e.value.message


def test_offline_without_a_cached_copy_is_unavailable(online, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(online.requests)
    with pytest.raises(Unavailable) as e:
        resolve_commit("tiny/lm", "step1")
    assert "HF_HUB_OFFLINE=1" in e.value.message and "not in the local Hugging Face cache" in e.value.message
    assert len(online.requests) == n  # offline asks nothing


def test_hub_errors_inside_loaders_are_mapped():
    """transformers and datasets wrap hub errors (raise OSError(...) from GatedRepoError): still mapped."""
    import httpx2
    from huggingface_hub.errors import GatedRepoError

    from cluster.hub import hub_error

    def wrapped(inner: BaseException) -> OSError:
        try:
            try:
                raise inner
            except BaseException as e:
                raise OSError("You are trying to access a gated repo.") from e
        except OSError as outer:
            return outer

    gated = GatedRepoError("401 Client Error", response=httpx2.Response(401, request=httpx2.Request("GET", "http://h")))
    assert isinstance(hub_error(wrapped(gated), "tiny/x", "main"), PermissionDenied)
    down = hub_error(wrapped(httpx2.ConnectError("Connection refused")), "tiny/x", None, "dataset")
    assert isinstance(down, Unavailable) and "dataset 'tiny/x'" in down.message
    assert hub_error(OSError("disk full"), "tiny/x", "main") is None  # not a hub error: the caller decides


def test_workers_that_loaded_different_commits_fail_the_job():
    """A branch that moves between two workers' loads would mix checkpoints in one estimate."""
    from cluster.contract.errors import FailedPrecondition
    from cluster.hub import check_same_commits

    def summary(model_commit, data_commit):
        return {"model_provenance": {"hub_id": "tiny/lm", "revision": "main", "commit": model_commit},
                "dataset_provenance": {"d": {"hub_id": "tiny/texts", "revision": "", "commit": data_commit}}}

    check_same_commits(summary("a" * 40, "c" * 40), summary("a" * 40, "c" * 40))
    local = {"model_provenance": {"local_path": "/m", "commit": None}, "dataset_provenance": {"d": {"files": []}}}
    check_same_commits(local, local)
    with pytest.raises(FailedPrecondition) as e:
        check_same_commits(summary("a" * 40, "c" * 40), summary("b" * 40, "c" * 40))
    assert "moved on the hub during the job" in e.value.message and e.value.field == "model.revision"
    with pytest.raises(FailedPrecondition) as e:
        check_same_commits(summary("a" * 40, "c" * 40), summary("a" * 40, "d" * 40))
    assert e.value.message.startswith("dataset 'tiny/texts' revision 'main' moved")


# -- content hash of local checkpoints ------------------------------------------------------
def test_content_hash_covers_config_and_weights_only(hub, tmp_path):
    a = tmp_path / "a"
    shutil.copytree(hub.dirs["main"], a)
    digest = content_hash(a)
    assert len(digest) == 64 and digest == content_hash(hub.dirs["main"])
    assert {p.name for p in hashed_files(a)} == {"config.json", "model.safetensors"}
    (a / "README.md").write_text("notes")
    (a / "tokenizer_config.json").write_text("{}")
    assert content_hash(a) == digest  # tokenizer files and notes do not change the function
    assert content_hash(hub.dirs["step1"]) != digest  # other weights
    cfg = json.loads((a / "config.json").read_text())
    (a / "config.json").write_text(json.dumps({**cfg, "layer_norm_epsilon": 1e-3}))
    assert content_hash(a) != digest
    with pytest.raises(NotFound):
        content_hash(tmp_path)


def test_content_hash_covers_every_shard(tmp_path):
    d = tmp_path / "sharded"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors.index.json").write_text("{}")
    for i in (1, 2):
        (d / f"model-0000{i}-of-00002.safetensors").write_bytes(b"x" * 10)
    before = content_hash(d)
    assert len(hashed_files(d)) == 4
    (d / "model-00002-of-00002.safetensors").write_bytes(b"x" * 9 + b"y")  # same size, other bytes
    assert content_hash(d) != before


def test_content_hash_remembers_large_directories_until_a_file_changes(tmp_path, monkeypatch):
    import cluster.hub

    monkeypatch.setattr(cluster.hub, "_MEMO_MIN_BYTES", 0)
    monkeypatch.setattr(cluster.hub, "_hash_memo", {})
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"w" * 100)
    first = content_hash(tmp_path)
    assert list(cluster.hub._hash_memo.values()) == [first]
    assert content_hash(tmp_path) == first
    with open(tmp_path / "model.safetensors", "ab") as f:
        f.write(b"more")
    assert content_hash(tmp_path) != first and len(cluster.hub._hash_memo) == 2


# -- loaders through the stand-in (subprocesses) --------------------------------------------
LOADERS = """
import json, os, urllib.request
from cluster.models import load_model
from cluster.datasets import load_token_dataset
from cluster.contract.errors import LLCError
from cluster.contract.spec import DatasetRef, ModelRef

def log():
    return json.load(urllib.request.urlopen(os.environ["HF_ENDPOINT"] + "/_stand_in/requests"))

def weights(lm):
    return sum(float(p.double().sum()) for p in lm.model.parameters())

def error(fn):
    try:
        fn()
    except LLCError as e:
        return [e.code, e.message]
    return None

out = {}
n0 = len(log())
step1 = load_model(ModelRef(hub_id="tiny/lm", revision="step1"))
out["step1"] = {"provenance": step1.provenance, "weights": weights(step1),
                "tokens": step1.tokenizer("the cat sat")["input_ids"]}
n1 = len(log())
again = load_model(ModelRef(hub_id="tiny/lm", revision="step1"))
out["again"] = {"commit": again.provenance["commit"], "weights": weights(again), "requests": log()[n1:]}
main = load_model(ModelRef(hub_id="tiny/lm"))
out["main"] = {"provenance": main.provenance, "weights": weights(main)}
data = {}
for rev in ("", "v2"):
    ds = load_token_dataset(DatasetRef(hub_id="tiny/texts", revision=rev, context_length=16), main.tokenizer,
                            main.max_positions)
    data[rev or "main"] = {"rows": len(ds), "fingerprint": ds.fingerprint, "provenance": ds.provenance}
n2 = len(log())
ds = load_token_dataset(DatasetRef(hub_id="tiny/texts", context_length=16), main.tokenizer, main.max_positions)
data["again"] = {"fingerprint": ds.fingerprint, "requests": log()[n2:]}
out["data"] = data
out["errors"] = {
    "repo": error(lambda: load_model(ModelRef(hub_id="tiny/nope"))),
    "revision": error(lambda: load_model(ModelRef(hub_id="tiny/lm", revision="step2"))),
    "gated": error(lambda: load_model(ModelRef(hub_id="tiny/gated"))),
    "dataset": error(lambda: load_token_dataset(DatasetRef(hub_id="tiny/none", context_length=16), main.tokenizer,
                                                64)),
    "dataset_revision": error(lambda: load_token_dataset(DatasetRef(hub_id="tiny/texts", revision="v9",
                                                                    context_length=16), main.tokenizer, 64)),
    "gated_dataset": error(lambda: load_token_dataset(DatasetRef(hub_id="tiny/gated-texts", context_length=16),
                                                      main.tokenizer, 64)),
}
out["first_load_requests"] = log()[n0:n1]
print(json.dumps(out))
"""

OFFLINE = """
import json
from cluster.hub import resolve_commit
from cluster.models import load_model
from cluster.datasets import load_token_dataset
from cluster.contract.spec import DatasetRef, ModelRef
lm = load_model(ModelRef(hub_id="tiny/lm", revision="step1"))
ds = load_token_dataset(DatasetRef(hub_id="tiny/texts", revision="v2", context_length=16), lm.tokenizer, 64)
print(json.dumps({"commit": resolve_commit("tiny/lm", "step1"), "model": lm.provenance["commit"],
                  "weights": sum(float(p.double().sum()) for p in lm.model.parameters()),
                  "dataset": ds.provenance["commit"], "fingerprint": ds.fingerprint}))
"""


@pytest.fixture(scope="module")
def loaded(hub, tmp_path_factory):
    """LOADERS run once against the stand-in with an empty HF cache; (its output, that cache's HF_HOME)."""
    home = tmp_path_factory.mktemp("hf_home")
    return run_python(LOADERS, subprocess_env(hub.url, home)), home


def local_weights(directory: Path) -> float:
    from cluster.models import load_model
    from cluster.contract.spec import ModelRef

    lm = load_model(ModelRef(local_path=str(directory)))
    return sum(float(p.double().sum()) for p in lm.model.parameters())


@pytest.mark.slow
def test_a_hub_model_loads_at_the_revision_asked_for(loaded, hub):
    out, _ = loaded
    commits = hub.commits["tiny/lm"]
    prov = out["step1"]["provenance"]
    assert prov["hub_id"] == "tiny/lm" and prov["revision"] == "step1" and prov["commit"] == commits["step1"]
    assert prov["architecture"] == "gpt2" and out["step1"]["tokens"] == [3, 5, 9]
    assert out["step1"]["weights"] == pytest.approx(local_weights(hub.dirs["step1"]), rel=1e-12)
    assert out["main"]["provenance"]["commit"] == commits["main"] and out["main"]["provenance"]["revision"] == ""
    assert out["main"]["weights"] == pytest.approx(local_weights(hub.dirs["main"]), rel=1e-12)
    assert out["main"]["weights"] != out["step1"]["weights"]
    # Files are fetched at the resolved commit, never at the branch name (which could move meanwhile).
    files = [p for m, p in out["first_load_requests"] if "/resolve/" in p]
    assert files and all(f"/resolve/{commits['step1']}/" in p for p in files)
    assert ["GET", f"/tiny/lm/resolve/{commits['step1']}/model.safetensors"] in out["first_load_requests"]


@pytest.mark.slow
def test_a_second_load_downloads_nothing(loaded, hub):
    out, _ = loaded
    again = out["again"]
    assert again["commit"] == hub.commits["tiny/lm"]["step1"] and again["weights"] == out["step1"]["weights"]
    # The branch is resolved again (it may have moved); no file is fetched, not even a HEAD.
    assert again["requests"][0] == ["GET", "/api/models/tiny/lm/revision/step1"]
    assert not [r for r in again["requests"] if "/resolve/" in r[1]], again["requests"]


@pytest.mark.slow
def test_a_hub_dataset_loads_at_its_revision_and_is_cached(loaded, hub):
    data = loaded[0]["data"]
    commits = hub.commits["tiny/texts"]
    assert data["main"]["provenance"]["commit"] == commits["main"]
    assert data["v2"]["provenance"]["commit"] == commits["v2"] and data["v2"]["provenance"]["revision"] == "v2"
    assert data["main"]["fingerprint"] != data["v2"]["fingerprint"] and data["main"]["rows"] > data["v2"]["rows"] > 0
    assert data["again"]["fingerprint"] == data["main"]["fingerprint"]
    assert not [r for r in data["again"]["requests"] if r[0] == "GET" and "/resolve/" in r[1]], data["again"]
    assert hub.count("GET", f"/datasets/tiny/texts/resolve/{commits['main']}/data/train.jsonl") == 1


@pytest.mark.slow
def test_loader_errors_name_what_is_wrong(loaded):
    errors = loaded[0]["errors"]
    assert errors["repo"][0] == "NOT_FOUND" and "model 'tiny/nope' not found on the hub" in errors["repo"][1]
    assert errors["revision"][0] == "NOT_FOUND" and "has no revision 'step2'" in errors["revision"][1]
    # A gated repository's info is public; its files are refused: PERMISSION_DENIED, not "no config".
    assert errors["gated"][0] == "PERMISSION_DENIED" and "gated" in errors["gated"][1], errors["gated"]
    assert errors["dataset"][0] == "NOT_FOUND" and "dataset 'tiny/none' not found" in errors["dataset"][1]
    assert errors["dataset_revision"][0] == "NOT_FOUND" and "no revision 'v9'" in errors["dataset_revision"][1]
    assert errors["gated_dataset"][0] == "PERMISSION_DENIED", errors["gated_dataset"]


@pytest.mark.slow
def test_offline_reuses_what_was_downloaded(loaded, hub):
    """HF_HUB_OFFLINE=1 with the cache the online run filled: branches resolve from refs/, no request."""
    out, home = loaded
    env = {**subprocess_env(hub.url, home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    n = len(hub.requests)
    offline = run_python(OFFLINE, env)
    assert len(hub.requests) == n
    assert offline["commit"] == offline["model"] == hub.commits["tiny/lm"]["step1"]
    assert offline["weights"] == out["step1"]["weights"]
    assert offline["dataset"] == hub.commits["tiny/texts"]["v2"]
    assert offline["fingerprint"] == out["data"]["v2"]["fingerprint"]


# -- an estimate job on a hub model --------------------------------------------------------
def _run_driver(spec: dict, hub, tmp_path, *, timeout: int) -> dict:
    """Runs one job with `cluster.driver --local` against the stand-in hub; returns its result document."""
    from cluster.contract.events import parse_lines

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = {k: v for k, v in subprocess_env(hub.url, tmp_path / "hf").items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-m", "cluster.driver", "--spec", str(spec_file), "--local",
                          "--num-cpus", "1"], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    events = list(parse_lines(out.stdout.splitlines()))
    assert out.returncode == 0 and events and events[-1]["type"] == "result", (out.stderr[-3000:], events[-2:])
    return events[-1]["result"]


@pytest.mark.slow
def test_an_estimate_job_on_a_hub_model(hub, tmp_path):
    """The driver (local Ray; its workers inherit the environment) estimates on tiny/lm@step1 and
    tiny/texts: the result's provenance names both commits."""
    spec = {
        "job_id": "hub-job",
        "model": {"hub_id": "tiny/lm", "revision": "step1"},
        "dataset": {"hub_id": "tiny/texts", "context_length": 16},
        "sampler": {"chains": 2, "draws": 20, "burn_in": 0, "step_size": 1e-4, "nbeta": 10.0, "gamma": 100.0,
                    "seed": 3},
        "restrictions": [{"name": "full"}],
        "batch_size": 8,
        "compute": {"cpus_per_chain": 1},
    }
    result = _run_driver(spec, hub, tmp_path, timeout=300)
    (full,) = result["restrictions"]
    assert len(full["chains"]) == 2 and full["llc_mean"] == full["llc_mean"]  # not NaN
    prov = result["provenance"]
    assert prov["model"]["commit"] == hub.commits["tiny/lm"]["step1"] and prov["model"]["revision"] == "step1"
    assert prov["dataset"]["commit"] == hub.commits["tiny/texts"]["main"]


@pytest.mark.slow
def test_a_trajectory_over_hub_revisions(hub, tmp_path):
    """Checkpoints named by revisions of one hub model: each identified by its commit; an unknown
    revision fails that checkpoint with NOT_FOUND naming it and keeps the others."""
    spec = {
        "job_id": "hub-trajectory",
        "model": {"hub_id": "tiny/lm"},
        "dataset": {"hub_id": "tiny/texts", "context_length": 16},
        "checkpoints": [{"step": 1, "revision": "step1"}, {"step": 5, "revision": "nope"}],
        "sampler": {"chains": 1, "draws": 10, "burn_in": 0, "step_size": 1e-4, "nbeta": 10.0, "gamma": 100.0,
                    "seed": 3},
        "restrictions": [{"name": "full"}],
        "batch_size": 8,
        "compute": {"cpus_per_chain": 1},
    }
    by_step = {cp["step"]: cp for cp in _run_driver(spec, hub, tmp_path, timeout=400)["checkpoints"]}
    good, bad = by_step[1], by_step[5]
    assert good["status"] == "succeeded" and good["identity"] == f"commit:tiny/lm@{hub.commits['tiny/lm']['step1']}"
    assert bad["status"] == "failed" and "NOT_FOUND" in bad["message"] and "no revision 'nope'" in bad["message"]


@pytest.mark.slow
def test_preflight_sees_the_config_of_a_hub_model_a_job_downloaded(loaded, monkeypatch):
    """The front end's early validation reads config.json from the hub cache by revision name
    (try_to_load_from_cache → refs/<revision>), which the loaders' download by commit never wrote."""
    import types

    from huggingface_hub import constants

    from cluster.contract.spec import ModelRef
    from service.preflight import model_config

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(loaded[1] / "hub"))
    for revision in ("step1", ""):
        config = model_config(types.SimpleNamespace(model=ModelRef(hub_id="tiny/lm", revision=revision)), False)
        assert config is not None and config["model_type"] == "gpt2", revision
    assert model_config(types.SimpleNamespace(model=ModelRef(hub_id="tiny/lm", revision="step7")), False) is None
