"""The Python SDK and CLI (clients/python): request building, typed results, import
isolation (grpcio + protobuf only), and the CLI against a real server on 127.0.0.1."""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from llc import requests
from llc.cli import main as cli
from llc.results import EstimateResult
from llc.v1 import llc_pb2 as pb
from service.states import JobState
from service.store import JobRecord

ROOT = Path(__file__).resolve().parents[2]


def test_sdk_imports_with_only_grpcio_and_protobuf(tmp_path):
    """Runs `import llc, llc.cli` in an isolated interpreter whose path holds only grpc,
    protobuf (google/), typing_extensions and the client package; `llc serve` there says what to
    install, and nothing imports the server package."""
    sp = Path(site.getsitepackages()[0])
    only = tmp_path / "site"
    only.mkdir()
    for name in ("grpc", "google", "typing_extensions.py"):
        (only / name).symlink_to(sp / name)
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "import llc, llc.cli, llc.client, llc.results, llc.requests, llc.progress, llc.plots\n"
            "from llc import Client\n"
            "import contextlib, io\n"
            "err = io.StringIO()\n"
            "with contextlib.redirect_stderr(err):\n"
            "    code = llc.cli.main(['serve', '--listen', '127.0.0.1:0'])\n"
            "assert code == 2 and 'needs the server package' in err.getvalue(), (code, err.getvalue())\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'transformers', 'numpy', "
            "'pandas', 'matplotlib', 'tqdm', 'service', 'cluster'})\n"
            "assert not heavy, heavy\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(only), str(ROOT / "clients" / "python")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_missing_optional_extras_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    result = EstimateResult([], {}, [])
    with pytest.raises(ImportError, match=r"llc-client\[pandas\]"):
        result.to_dataframe()


@pytest.mark.parametrize("text,expected", [
    ("head0=head:0.1", ("head0", [(pb.SELECTOR_KIND_HEAD, "", 0, 1)], False)),
    ("l1=layer:1+mlp:0", ("l1", [(pb.SELECTOR_KIND_LAYER, "", 1, 0), (pb.SELECTOR_KIND_MLP, "", 0, 0)], False)),
    ("emb=embedding", ("emb", [(pb.SELECTOR_KIND_EMBEDDING, "", 0, 0)], False)),
    ("qkv=*.query_key_value.*", ("qkv", [(pb.SELECTOR_KIND_PATTERN, "*.query_key_value.*", 0, 0)], False)),
    ("r=regex:layers\\.0\\..*", ("r", [(pb.SELECTOR_KIND_REGEX, "layers\\.0\\..*", 0, 0)], False)),
    ("code=all@/tmp/code.jsonl", ("code", [(pb.SELECTOR_KIND_ALL, "", 0, 0)], True)),
    ("code-data@/tmp/code.jsonl", ("code-data", [], True)),
])
def test_restriction_syntax(text, expected):
    r = requests.restriction(text)
    name, selectors, has_data = expected
    assert r.name == name and r.HasField("dataset") == has_data
    assert [(w.kind, w.pattern, w.layer, w.head) for w in r.weights] == selectors


@pytest.mark.parametrize("text", ["", "noequals", "x=", "x=head:a.b", "x=layer", "x=bogus:1", "=all"])
def test_malformed_restrictions_are_refused_with_the_syntax(text):
    with pytest.raises(ValueError, match="NAME=SELECTOR"):
        requests.restriction(text)


def test_model_and_dataset_references(tmp_path):
    assert requests.model_ref("EleutherAI/pythia-14m").hub_id == "EleutherAI/pythia-14m"
    assert requests.model_ref(str(tmp_path)).local_path == str(tmp_path)
    assert requests.dataset_ref("NeelNanda/pile-10k").hub_id == "NeelNanda/pile-10k"
    ds = requests.dataset_ref("rel/train.jsonl", context_length=32)
    assert ds.files == [os.path.abspath("rel/train.jsonl")] and ds.context_length == 32
    spec = requests.estimate_spec("org/m", "org/d", chains=3, method="rmsprop_sgld", gpus_per_chain=0.5, batch_size=2)
    assert spec.sampler.chains == 3 and spec.sampler.method == pb.SAMPLER_METHOD_RMSPROP_SGLD
    assert spec.compute.gpus_per_chain == 0.5 and spec.batch_size == 2 and not spec.sampler.HasField("draws")
    with pytest.raises(ValueError, match="unknown setting 'chain'"):
        requests.estimate_spec("org/m", "org/d", chain=3)
    with pytest.raises(ValueError, match="method must be one of"):
        requests.estimate_spec("org/m", "org/d", method="hmc")


def sample_result() -> EstimateResult:
    from tests.service.test_convert import result_document
    from service.convert import result_from_dict

    return EstimateResult.from_proto(result_from_dict(result_document()))


def test_result_table_dataframe_and_plots(tmp_path):
    result = sample_result()
    table = result.table()
    assert table.splitlines()[0].split()[:3] == ["restriction", "llc_mean", "llc_std"] and "full" in table
    df = result.to_dataframe()
    assert list(df["restriction"]) == ["full"] and df.loc[0, "llc_mean"] == 2.5 and df.loc[0, "diverged"] == 1
    assert len(result.chains_dataframe()) == 2
    for path in (result.plot_loss_traces(str(tmp_path / "traces.png")), result.plot_llc(str(tmp_path / "llc.png"))):
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ CLI against a real server
@pytest.fixture
def server(make_server):
    server = make_server()
    store = server.server.store
    for i, state in enumerate([JobState.QUEUED, JobState.RUNNING, JobState.FAILED]):
        store.create(JobRecord(id=f"est-{i}", owner="cli", fingerprint="f", created_at=1000.0 + i,
                               spec_json=json.dumps({"job_id": f"est-{i}", "sampler": {"chains": 1, "draws": 5}})))
        if state != JobState.QUEUED:
            store.transition(f"est-{i}", state, error_code="NOT_FOUND" if state == JobState.FAILED else "",
                             error_message="no model at /x" if state == JobState.FAILED else "")
    return server


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_jobs_get_and_cancel(server, capsys):
    code, out, _ = run_cli(capsys, "jobs", "--address", server.address, "--json")
    assert code == 0 and [e["id"] for e in json.loads(out)] == ["est-2", "est-1", "est-0"]
    code, out, _ = run_cli(capsys, "jobs", "--address", server.address, "--state", "FAILED")
    assert code == 0 and out.startswith("est-2  FAILED") and "NOT_FOUND: no model at /x" in out
    code, out, _ = run_cli(capsys, "get", "est-1", "--address", server.address, "--json")
    assert code == 0 and json.loads(out)["state"] == "RUNNING"
    code, out, err = run_cli(capsys, "cancel", "est-2", "--address", server.address, "--json")
    assert code == 1 and json.loads(out)["error"]["code"] == "FAILED_PRECONDITION" and "nothing to cancel" in err
    code, out, err = run_cli(capsys, "get", "est-404", "--address", server.address)
    assert code == 1 and "NOT_FOUND" in err and "llc jobs" in err


def test_cli_estimate_errors(server, capsys, tmp_path):
    code, _, err = run_cli(capsys, "estimate", "--address", server.address, "--model", "org/m", "--dataset", "org/d",
                           "--restrict", "oops")
    assert code == 2 and "NAME=SELECTOR" in err
    code, _, err = run_cli(capsys, "estimate", "--address", server.address, "--model", str(tmp_path / "missing"),
                           "--dataset", "org/d")
    assert code == 1 and "NOT_FOUND" in err and "local_path" in err
    # Valid, but this server's Ray cluster is down.
    code, _, err = run_cli(capsys, "estimate", "--address", server.address, "--model", "org/m", "--dataset", "org/d",
                           "--draws", "5")
    assert code == 1 and "UNAVAILABLE" in err


def test_cli_console_script_and_unreachable_server():
    llc_bin = Path(sys.executable).parent / "llc"
    out = subprocess.run([str(llc_bin), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "estimate" in out.stdout and "serve" in out.stdout
    out = subprocess.run([str(llc_bin), "jobs", "--address", "127.0.0.1:1"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "LLC_TOKEN": ""})
    assert out.returncode == 1 and "UNAVAILABLE" in out.stderr


def test_data_restrictions_inherit_the_main_datasets_tokenization():
    spec = requests.estimate_spec("org/m", "/d/train.jsonl", context_length=32, max_examples=100,
                                  restrictions=["code=all@/d/code.jsonl", {"name": "x", "dataset": {
                                      "files": ["/d/x.jsonl"], "contextLength": 8}}])
    assert spec.restrictions[0].dataset.context_length == 32 and spec.restrictions[0].dataset.max_examples == 100
    assert spec.restrictions[1].dataset.context_length == 8  # its own setting wins


def test_the_progress_bar_never_goes_back_when_an_automatic_burn_in_lengthens_the_chains():
    """The chains report their calibrated length (total_steps); a finished chain counts all of it."""
    import io

    from llc.progress import ProgressBar
    from llc.results import Event
    from llc.v1 import llc_pb2 as pb

    bar = ProgressBar("est-1", stream=io.StringIO())
    snapshot = pb.WatchEstimateResponse(seq=0, snapshot=pb.Estimate(
        state=pb.ESTIMATE_STATE_RUNNING, progress=pb.EstimateProgress(chains_total=2, steps_total=200)))
    shown = []
    for message in [snapshot] + [
            pb.WatchEstimateResponse(seq=i, progress=pb.ChainProgressEvent(restriction="a", chain=0, step=step,
                                                                          total_steps=300))
            for i, step in enumerate((100, 200, 290), 1)] + [
            pb.WatchEstimateResponse(seq=4, chain=pb.ChainStatusEvent(restriction="a", chain=0,
                                                                      state=pb.CHAIN_STATE_SUCCEEDED, llc=1.0))]:
        bar.update(Event.from_proto(message))
        shown.append((bar._bar.n, bar._bar.total) if bar._bar is not None else None)
    bar.close()
    steps = [n for n, _ in shown]
    assert steps == sorted(steps) and shown[-1] == (300, 400)  # chain 0's 300 steps; chain 1 still at the spec's 100
