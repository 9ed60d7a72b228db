"""End to end: a real llc.v1 server on 127.0.0.1, a real local Ray cluster (ray_head) and
the real driver running tiny models. Slow (each estimate starts Ray workers that import torch)."""
from __future__ import annotations

import json
import math
import threading
import time

import pytest

from llc import Client
from llc.cli import main as cli
from tests.fixtures.service import server_starter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_and_data(tiny_lm_dirs, text_jsonl, other_text_jsonl):
    return str(tiny_lm_dirs["gpt_neox"]), str(text_jsonl), str(other_text_jsonl)


@pytest.fixture
def serve(ray_head, tmp_path):
    with server_starter(tmp_path, ray_dashboard_url=ray_head.dashboard_url) as start:
        yield start


def ray_jobs(ray_head, submission_id: str):
    from ray.job_submission import JobSubmissionClient

    return [j for j in JobSubmissionClient(ray_head.dashboard_url).list_jobs() if j.submission_id == submission_id]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# Settings given, so no calibration pilots run (tests/engine/test_calibration.py covers those).
SMALL = dict(chains=2, draws=20, context_length=16, batch_size=4, step_size=1e-3, nbeta=10.0, burn_in=0)


def test_estimate_idempotent_create_and_50_watchers(serve, ray_head, model_and_data):
    model, data, other = model_and_data
    server = serve()
    client = Client(server.address, client_id="e2e")
    est = client.submit(model, data, restrictions=["full=all", "layer0=layer:0", "short=all@" + other],
                        request_id="e2e-1", **SMALL)
    again = client.submit(model, data, restrictions=["full=all", "layer0=layer:0", "short=all@" + other],
                          request_id="e2e-1", **SMALL)
    assert again.id == est.id and est.state == "QUEUED"

    finals: list = [None] * 50
    errors: list = []

    def watch(i: int) -> None:
        try:
            for event in client.watch(est.id, timeout=240):
                if event.estimate is not None:
                    finals[i] = event.estimate
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=watch, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(260)
    assert not errors, errors[:3]
    assert all(f is not None and f.state == "SUCCEEDED" for f in finals), {f.state if f else None for f in finals}
    result = finals[0].result
    assert [r.name for r in result.restrictions] == ["full", "layer0", "short"]
    for r in result.restrictions:
        assert len(r.llc_per_chain) == 2 and math.isfinite(r.llc_mean) and len(r.loss_traces[0]) == 20
        assert {c.state for c in r.chains} == {"SUCCEEDED"} and r.init_loss > 0
    assert result["layer0"].moved_elements < result["full"].moved_elements
    assert result.provenance["spec"]["job_id"] == est.id
    assert all(f.result.to_dict() == result.to_dict() for f in finals)

    # Replaying every event gives seqs 0..last once each; resuming mid-way gives exactly the rest.
    replay = [e for e in client.watch(est.id, after_seq=-1) if e.kind != "snapshot"]
    seqs = [e.seq for e in replay]
    assert seqs == sorted(set(seqs)) and seqs[0] == 0 and {e.kind for e in replay} >= {"started", "chain"}
    mid = seqs[len(seqs) // 2]
    resumed = list(client.watch(est.id, after_seq=mid))
    assert [e.seq for e in resumed if e.kind != "snapshot"] == [s for s in seqs if s > mid]
    assert resumed[-1].kind == "snapshot" and resumed[-1].estimate.state == "SUCCEEDED"

    final = client.get(est.id)
    assert final.progress.fraction == 1.0 and final.progress.chains_finished == 6
    assert [e.id for e in client.list(state="SUCCEEDED")] == [est.id]
    assert len(ray_jobs(ray_head, f"llc-{est.id}")) == 1  # the second create started nothing


def test_cli_estimate_prints_json_and_saves_plots(serve, model_and_data, tmp_path, capsys):
    model, data, _ = model_and_data
    server = serve()
    code = cli(["estimate", "--address", server.address, "--model", model, "--dataset", data, "--restrict",
                "head0=head:0.1", "--chains", "2", "--draws", "10", "--context-length", "16", "--batch-size", "4",
                "--step-size", "1e-3", "--nbeta", "10", "--burn-in", "0",
                "--json", "--quiet", "--plots", str(tmp_path / "plots")])
    out = capsys.readouterr().out
    assert code == 0, out
    doc = json.loads(out)
    assert doc["restrictions"][0]["name"] == "head0" and len(doc["restrictions"][0]["llc_per_chain"]) == 2
    assert sorted(p.name.split("-", 2)[-1] for p in (tmp_path / "plots").iterdir()) == [
        "calibration.png", "llc.png", "loss-traces.png"]
    # `llc watch --json` replays the finished estimate: one JSON event per line, the terminal snapshot last.
    assert cli(["watch", doc["estimate_id"], "--address", server.address, "--json", "--after-seq", "-1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["kind"] == "snapshot" and lines[-1]["estimate"]["state"] == "SUCCEEDED"
    assert [e["seq"] for e in lines if e["kind"] != "snapshot"][0] == 0
    assert cli(["get", doc["estimate_id"], "--address", server.address]) == 0
    assert "SUCCEEDED" in capsys.readouterr().out


def test_a_failing_driver_fails_the_estimate_with_its_code(serve, model_and_data, tmp_path):
    _, data, _ = model_and_data
    server = serve(check_local_paths=False)  # as when the front end cannot see the cluster's files
    client = Client(server.address)
    est = client.submit(str(tmp_path / "no-such-model"), data, **SMALL)
    final = client.wait(est.id, timeout=180)
    assert final.state == "FAILED" and final.error_code == "NOT_FOUND" and "no-such-model" in final.error_message


def test_cancel_mid_job_stops_the_ray_job_and_frees_its_workers(serve, ray_head, model_and_data):
    from ray.util.state import list_actors

    model, data, _ = model_and_data
    server = serve()
    client = Client(server.address)
    est = client.submit(model, data, chains=2, draws=1_000_000, context_length=16, batch_size=4)
    for event in client.watch(est.id, timeout=180):
        if event.kind in ("progress", "preview"):
            break  # chain workers are up and sampling
    cancelled = client.cancel(est.id)
    assert cancelled.state == "CANCELLED" and "cancelled by" in cancelled.error_message
    wait_for(lambda: ray_jobs(ray_head, f"llc-{est.id}")[0].status == "STOPPED", 60, "the Ray job to stop")
    alive = lambda: [a for a in list_actors(address=ray_head.dashboard_url, filters=[("state", "=", "ALIVE")])]  # noqa: E731
    wait_for(lambda: not alive(), 60, "the job's chain workers to exit")
    final = client.wait(est.id, timeout=30)
    assert final.state == "CANCELLED" and final.result is None


def test_restarting_the_front_end_mid_job_loses_nothing(serve, ray_head, model_and_data):
    """A watcher stays connected through the restart: its stream ends with UNAVAILABLE, the SDK
    reconnects to the new front end (same port) from the last event seen, and no event is lost."""
    model, data, _ = model_and_data
    first = serve()
    address = first.address
    client = Client(address)
    est = client.submit(model, data, chains=2, draws=400, context_length=16, batch_size=4)
    events, errors = [], []

    def watch():
        try:
            events.extend(client.watch(est.id, after_seq=-1, timeout=300))
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    wait_for(lambda: any(e.kind == "started" for e in events), 120, "the estimate to start")
    first.stop()
    assert ray_jobs(ray_head, f"llc-{est.id}")[0].status in ("RUNNING", "SUCCEEDED")  # Ray kept it

    serve(address=address)  # same SQLite file: follows the unfinished job again
    watcher.join(300)
    assert not errors, errors
    final = events[-1].estimate
    assert final.state == "SUCCEEDED" and len(final.result.restrictions[0].llc_per_chain) == 2
    seqs = [e.seq for e in events if e.kind != "snapshot"]
    assert seqs == list(range(len(seqs))) and seqs  # every event once, none lost across the restart
    with Client(address) as again:  # and the stored history is complete too
        replay = [e.seq for e in again.watch(est.id, after_seq=-1) if e.kind != "snapshot"]
    assert replay == seqs


def test_preview_reports_the_weights_each_restriction_moves(serve, ray_head, model_and_data, capsys):
    model, data, _ = model_and_data
    server = serve()
    with Client(server.address) as client:
        previews = client.preview(model, data, restrictions=["full=all", "head0=head:0.1", "emb=embedding"],
                                  context_length=16, timeout=180)
        assert [p["name"] for p in previews] == ["full", "head0", "emb"]
        full, head, emb = (p["elements"] for p in previews)
        assert 0 < head < full and 0 < emb < full
        assert sum(t["elements"] for t in previews[0]["tensors"]) == full
        from llc.errors import LLCError

        with pytest.raises(LLCError) as info:  # the driver's own check: a selector that matches nothing
            client.preview(model, data, restrictions=["none=pattern:no.such.weight.*"], context_length=16, timeout=180)
        assert info.value.code == "INVALID_ARGUMENT" and "no.such.weight" in info.value.message
        assert client.list() == []  # previews are not estimates
    wait_for(lambda: not [j for j in ray_jobs_all(ray_head) if (j.submission_id or "").startswith("llc-preview-")
                          and j.status not in ("STOPPED", "SUCCEEDED", "FAILED")], 60, "preview jobs to stop")


def ray_jobs_all(ray_head):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(ray_head.dashboard_url).list_jobs()
