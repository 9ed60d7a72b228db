"""The job driver on a real multi-node Ray cluster (tests/fixtures/ray_nodes.py): chains
spread over nodes, a killed worker's chain is retried, a lost node's chains move,
cancel frees everything, and placement does not change any chain's λ̂.

Every job here is the same tiny GPT-2 estimate (4 chains, 400 draws), so results
of different placements can be compared value for value.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import pytest

from cluster.contract.events import parse_lines

pytestmark = pytest.mark.slow

CHAINS = 4


def job_spec(model_dir, data_file, job_id: str, *, draws: int = 400, restrictions=None, **compute) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "model": {"local_path": str(model_dir)},
        "dataset": {"files": [str(data_file)], "context_length": 16},
        "sampler": {"chains": CHAINS, "draws": draws, "burn_in": 0, "step_size": 1e-4, "nbeta": 10.0, "gamma": 100.0,
                    "fetch_every": 25, "seed": 11},
        "restrictions": restrictions or [{"name": "full"}],
        "batch_size": 8,
        "compute": {"cpus_per_chain": 1, **compute},
    }


def driver_env(ray_nodes, **extra: str) -> dict[str, str]:
    return {**os.environ, "RAY_ADDRESS": ray_nodes.address, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", **extra}


def run_driver(spec: dict, ray_nodes, *, on_event: Callable[[dict], None] | None = None, timeout: float = 240,
               **env: str) -> tuple[int, list[dict]]:
    """Runs `python -m cluster.driver` against the cluster, calling on_event for each event as it comes."""
    proc = subprocess.Popen([sys.executable, "-m", "cluster.driver"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=driver_env(ray_nodes, LLC_JOB_SPEC=json.dumps(spec), **env))
    events = []
    deadline = time.monotonic() + timeout
    try:
        for event in parse_lines(proc.stdout):
            events.append(event)
            if on_event is not None:
                on_event(event)
            assert time.monotonic() < deadline, f"driver still running after {timeout} s; events: {events[-3:]}"
        return proc.wait(timeout=30), events
    finally:
        if proc.poll() is None:
            proc.kill()


def result_of(events: list[dict]) -> dict:
    assert events and events[-1]["type"] == "result", f"the job did not end with a result: {events[-1:]}"
    (restriction,) = events[-1]["result"]["restrictions"]
    return restriction


def chain_workers(ray_nodes, job_id: str | None = None, state: str = "ALIVE") -> list:
    from ray.util.state import list_actors

    filters = [("class_name", "=", "ChainWorker"), ("state", "=", state)]
    if job_id:
        filters.append(("job_id", "=", job_id))
    return list_actors(address=ray_nodes.dashboard_url, filters=filters)


@pytest.fixture(scope="module")
def baseline(ray_nodes, tiny_gpt2_dir, text_jsonl) -> dict:
    """The reference job, submitted through Ray's job API as the front end does."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_nodes.dashboard_url)
    spec = job_spec(tiny_gpt2_dir, text_jsonl, "baseline")
    sid = client.submit_job(entrypoint=f"{sys.executable} -m cluster.driver",
                            runtime_env={"env_vars": {"LLC_JOB_SPEC": json.dumps(spec), "HF_HUB_OFFLINE": "1"}})
    deadline = time.monotonic() + 240
    while not client.get_job_status(sid).is_terminal():
        assert time.monotonic() < deadline, client.get_job_logs(sid)[-3000:]
        time.sleep(0.5)
    logs = client.get_job_logs(sid)
    assert client.get_job_status(sid) == JobStatus.SUCCEEDED, logs[-3000:]
    return {"events": list(parse_lines(logs.splitlines())), "spec": spec}


def test_job_api_run_spreads_chains_over_both_nodes_and_streams_progress(baseline, ray_nodes):
    events = baseline["events"]
    types = [e["type"] for e in events]
    assert types[:2] == ["started", "preview"] and types[-1] == "result"
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert types.count("chain") == CHAINS and "progress" in types
    first_chain = types.index("chain")
    assert "progress" in types[:first_chain], "progress must flow while chains run, not only at the end"
    steps = [e["step"] for e in events if e["type"] == "progress" and e["chain"] == 0]
    assert steps == sorted(steps) and all(0 < s <= 400 for s in steps)

    r = result_of(events)
    assert [c["chain"] for c in r["chains"]] == list(range(CHAINS))
    assert all(c["status"] == "succeeded" and c["attempts"] == 1 for c in r["chains"])
    nodes = {c["extra"]["node_id"] for c in r["chains"]}
    assert nodes == set(ray_nodes.worker_node_ids.values()), "chains must run on both worker nodes"
    # The model loads once per worker process: two workers, each ran two chains.
    workers = events[-1]["result"]["provenance"]["workers"]
    assert len(workers) == 2 and {c["extra"]["pid"] for c in r["chains"]} == {w["pid"] for w in workers}
    assert r["init_loss"] > 0 and r["llc_mean"] == pytest.approx(sum(r["llc_per_chain"]) / CHAINS)


def test_one_worker_gives_the_same_chains_as_two(baseline, ray_nodes):
    spec = baseline["spec"]
    code, events = run_driver(spec, ray_nodes, LLC_MAX_CHAIN_WORKERS="1")
    assert code == 0, events[-1:]
    r = result_of(events)
    assert len({c["extra"]["node_id"] for c in r["chains"]}) == 1
    assert r["llc_per_chain"] == result_of(baseline["events"])["llc_per_chain"]  # bit for bit
    assert r["loss_traces"] == result_of(baseline["events"])["loss_traces"]


def test_chains_per_worker_runs_chains_batched_in_fewer_processes_with_the_same_results(baseline, ray_nodes):
    """compute.chains_per_worker = 2: two workers of two CPUs, each running its two chains as one
    vmap-batched computation (cluster.engine.batched); the chains equal those run one at a time."""
    spec = {**baseline["spec"], "compute": {"cpus_per_chain": 0.5, "chains_per_worker": 2}}
    code, events = run_driver(spec, ray_nodes, LLC_MAX_CHAIN_WORKERS="1")
    assert code == 0, events[-1:]
    r, ref = result_of(events), result_of(baseline["events"])
    assert [c["extra"]["chains_together"] for c in r["chains"]] == [2] * CHAINS
    assert len({c["extra"]["pid"] for c in r["chains"]}) == 1  # one process, one model copy, all four chains
    assert r["llc_per_chain"] == pytest.approx(ref["llc_per_chain"], rel=1e-4, abs=1e-4)
    progress = {e["chain"] for e in events if e["type"] == "progress"}
    assert progress <= set(range(CHAINS)) and len(progress) >= 2, "every batched chain reports its own progress"


def test_a_worker_killed_mid_chain_is_replaced_and_its_chain_retried(baseline, ray_nodes):
    killed: list[int] = []

    def kill_once_running(event: dict) -> None:
        if event["type"] == "progress" and not killed:
            os.kill(event["pid"], signal.SIGKILL)  # the worker process running this chain
            killed.append(event["pid"])

    code, events = run_driver(baseline["spec"], ray_nodes, on_event=kill_once_running)
    assert killed and code == 0, events[-1:]
    retrying = [e for e in events if e["type"] == "chain" and e["status"] == "retrying"]
    assert len(retrying) == 1 and retrying[0]["chain"] == [e for e in events if e["type"] == "progress"][0]["chain"]
    assert len(retrying) == 1 and "worker process died" in retrying[0]["message"]
    r = result_of(events)
    assert len(r["chains"]) == CHAINS and all(c["status"] == "succeeded" for c in r["chains"])
    retried = [c for c in r["chains"] if c["attempts"] == 2]
    assert [c["chain"] for c in retried] == [retrying[0]["chain"]]
    assert killed[0] not in {c["extra"]["pid"] for c in r["chains"]}
    assert r["llc_per_chain"] == result_of(baseline["events"])["llc_per_chain"]  # a retry reproduces the chain


def test_a_chain_whose_worker_keeps_dying_fails_the_job_and_keeps_the_others(ray_nodes, tiny_gpt2_dir, text_jsonl):
    spec = job_spec(tiny_gpt2_dir, text_jsonl, "doomed", max_chain_retries=1)
    killed: list[int] = []

    def kill_whoever_runs_chain_zero(event: dict) -> None:  # on both attempts
        if event["type"] == "progress" and event["chain"] == 0 and event["pid"] not in killed:
            os.kill(event["pid"], signal.SIGKILL)
            killed.append(event["pid"])

    code, events = run_driver(spec, ray_nodes, on_event=kill_whoever_runs_chain_zero)
    assert code == 1 and len(killed) == 2
    chain_zero = [e["status"] for e in events if e["type"] == "chain" and e["chain"] == 0]
    assert chain_zero == ["retrying", "failed"]
    error = events[-1]
    assert error["type"] == "error" and error["code"] == "UNAVAILABLE"
    assert "chain 0 of restriction 'full'" in error["message"] and "max_chain_retries" in error["message"]
    (partial,) = error["partial_result"]["restrictions"]
    assert [c["status"] for c in partial["chains"]] == ["failed", "succeeded", "succeeded", "succeeded"]
    assert partial["chains"][0]["attempts"] == 2 and partial["diagnostics"]["failed_chains"] == [0]
    assert partial["llc_mean"] == pytest.approx(sum(partial["llc_per_chain"][1:]) / 3)


def test_cancel_stops_every_chain_and_frees_the_cluster(ray_nodes, tiny_gpt2_dir, text_jsonl):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_nodes.dashboard_url)
    spec = job_spec(tiny_gpt2_dir, text_jsonl, "cancelled", draws=20000)
    sid = client.submit_job(entrypoint=f"{sys.executable} -m cluster.driver",
                            runtime_env={"env_vars": {"LLC_JOB_SPEC": json.dumps(spec), "HF_HUB_OFFLINE": "1"}})
    deadline = time.monotonic() + 180
    while not any(e["type"] == "progress" for e in parse_lines(client.get_job_logs(sid).splitlines())):
        assert not client.get_job_status(sid).is_terminal(), client.get_job_logs(sid)[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.5)
    job_id = client.get_job_info(sid).job_id
    pids = [a.pid for a in chain_workers(ray_nodes, job_id)]
    assert len(pids) == 2

    start = time.monotonic()
    client.stop_job(sid)
    while not client.get_job_status(sid).is_terminal():
        time.sleep(0.1)
    stopped_after = time.monotonic() - start
    assert client.get_job_status(sid) == JobStatus.STOPPED
    assert stopped_after < 10, f"stop took {stopped_after:.1f} s"
    events = list(parse_lines(client.get_job_logs(sid).splitlines()))
    assert events[-1]["type"] == "error" and events[-1]["code"] == "CANCELLED"
    assert not any(e["type"] == "result" for e in events)
    # Nothing of the job is left: its actors are dead, their processes gone, its CPUs free.
    deadline = time.monotonic() + 15
    while chain_workers(ray_nodes, job_id) or any(_process_alive(p) for p in pids):
        assert time.monotonic() < deadline, "chain workers still alive 15 s after cancel"
        time.sleep(0.3)
    from ray.util.state import list_tasks

    # The state API records task ends asynchronously: a fire-and-forget progress post to the killed
    # board can stay listed as RUNNING; what matters is that no process still runs any of them.
    def still_running():
        tasks = list_tasks(address=ray_nodes.dashboard_url, filters=[("job_id", "=", job_id), ("state", "=", "RUNNING")])
        return [t for t in tasks if t.worker_pid is None or _process_alive(t.worker_pid)]

    while running := still_running():
        assert time.monotonic() < deadline, f"tasks still running 15 s after cancel: {running}"
        time.sleep(0.3)


def _process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read()
    except FileNotFoundError:
        return False


def test_a_lost_node_moves_its_chains_to_the_others(baseline, ray_nodes):
    node_c = ray_nodes.add_worker("c")  # a third node, so losing it leaves the fixture's two
    killed: list[str] = []

    def lose_node_c(event: dict) -> None:
        if event["type"] == "progress" and event["node_id"] == node_c and not killed:
            os.killpg(ray_nodes.workers["c"].process.pid, signal.SIGKILL)  # the whole node, abruptly
            killed.append(node_c)

    code, events = run_driver(baseline["spec"], ray_nodes, on_event=lose_node_c)
    ray_nodes.workers.pop("c").stop()
    assert killed and code == 0, events[-1:]
    r = result_of(events)
    assert len(r["chains"]) == CHAINS and all(c["status"] == "succeeded" for c in r["chains"])
    assert any(c["attempts"] == 2 for c in r["chains"])
    assert {c["extra"]["node_id"] for c in r["chains"] if c["attempts"] == 2} <= set(ray_nodes.worker_node_ids.values()) - {node_c}
    assert r["llc_per_chain"] == result_of(baseline["events"])["llc_per_chain"]


def test_bad_restriction_fails_before_any_chain(ray_nodes, tiny_gpt2_dir, text_jsonl):
    spec = job_spec(tiny_gpt2_dir, text_jsonl, "badsel",
                    restrictions=[{"name": "nothing", "weights": [{"kind": "pattern", "pattern": "no.such.*"}]}])
    code, events = run_driver(spec, ray_nodes)
    assert code == 1
    assert [e["type"] for e in events] == ["started", "error"]
    assert events[-1]["code"] == "INVALID_ARGUMENT" and "no.such.*" in events[-1]["message"]
    assert "nothing" in events[-1]["message"]


def test_gpu_chains_on_a_cpu_cluster_fail_at_once(ray_nodes, tiny_gpt2_dir, text_jsonl):
    spec = job_spec(tiny_gpt2_dir, text_jsonl, "gpu", gpus_per_chain=0.5)
    start = time.monotonic()
    code, events = run_driver(spec, ray_nodes)
    assert code == 1 and events[-1]["code"] == "FAILED_PRECONDITION"
    assert "gpus_per_chain=0" in events[-1]["message"] and time.monotonic() - start < 30


def test_job_timeout(ray_nodes, tiny_gpt2_dir, text_jsonl):
    spec = job_spec(tiny_gpt2_dir, text_jsonl, "slow", draws=20000, timeout_s=3)
    code, events = run_driver(spec, ray_nodes)
    assert code == 1 and events[-1]["type"] == "error"
    assert events[-1]["code"] == "DEADLINE_EXCEEDED" and "compute.timeout_s=3" in events[-1]["message"]


def test_a_data_restriction_gets_its_own_dataset_and_init_loss(ray_nodes, tiny_gpt2_dir, text_jsonl, other_text_jsonl):
    spec = job_spec(tiny_gpt2_dir, text_jsonl, "data", draws=50, restrictions=[
        {"name": "full"},
        {"name": "other-data", "dataset": {"files": [str(other_text_jsonl)], "context_length": 16}},
        {"name": "layer0-other-data", "weights": [{"kind": "layer", "layer": 0}],
         "dataset": {"files": [str(other_text_jsonl)], "context_length": 16}},
    ])
    code, events = run_driver(spec, ray_nodes)
    assert code == 0, events[-1:]
    result = events[-1]["result"]
    full, other, layer0 = result["restrictions"]
    assert other["init_loss"] == layer0["init_loss"] != full["init_loss"]  # L(w*) per dataset, shared
    assert layer0["moved_elements"] < other["moved_elements"] == full["moved_elements"]
    prov = result["provenance"]
    assert prov["restriction_datasets"]["other-data"]["fingerprint"] != prov["dataset"]["fingerprint"]
    assert all(len(r["chains"]) == CHAINS for r in result["restrictions"])


def test_driver_local_mode_starts_its_own_ray(tmp_path, tiny_gpt2_dir, text_jsonl):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(job_spec(tiny_gpt2_dir, text_jsonl, "local", draws=30)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-m", "cluster.driver", "--spec", str(spec_file), "--local", "--num-cpus", "1"],
                         capture_output=True, text=True, timeout=240, env={**env, "HF_HUB_OFFLINE": "1"})
    events = list(parse_lines(out.stdout.splitlines()))
    assert out.returncode == 0, out.stderr[-2000:]
    r = result_of(events)
    assert len(r["chains"]) == CHAINS and len(events[-1]["result"]["provenance"]["workers"]) == 1


def test_fractional_gpu_chains_share_a_gpu_node(ray_nodes, tiny_gpt2_dir, text_jsonl):
    """Two chains of half a GPU go to the one node declaring a GPU; this machine has no CUDA,
    so each worker then refuses to run, naming the setting (a real GPU node runs them)."""
    node_g = ray_nodes.add_worker("g", num_cpus=2, num_gpus=1)
    try:
        spec = job_spec(tiny_gpt2_dir, text_jsonl, "halfgpu", gpus_per_chain=0.5)
        code, events = run_driver(spec, ray_nodes, LLC_PLACEMENT_TIMEOUT_S="60")
    finally:
        ray_nodes.workers.pop("g").stop()
    assert code == 1 and events[-1]["code"] == "FAILED_PRECONDITION", events[-1:]
    assert "sees no CUDA device" in events[-1]["message"] and "gpus_per_chain=0" in events[-1]["message"]
    assert not any(e["type"] in ("progress", "chain") for e in events)
    from ray.util.state import list_actors

    on_g = list_actors(address=ray_nodes.dashboard_url, filters=[("class_name", "=", "ChainWorker"),
                                                                ("node_id", "=", node_g)])
    assert len(on_g) == 2, "both half-GPU chain workers belong on the one GPU node"
