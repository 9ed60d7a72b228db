"""ZeRO-3 chains of 2 gloo ranks on a real Ray cluster (tests/fixtures/ray.py) with real DeepSpeed.

One 2-rank group (rank actors in a STRICT_PACK placement group, as the driver starts them)
serves the tests that compare it with the single-process engine (a ChainWorker in this
process): with the noise off the loss traces agree to floating-point tolerance, full-weight,
with an element mask (one attention head) and with whole tensors; with the noise on λ̂
agrees within its error bar over several chains; the two ranks' partitions get independent
noise. Then whole jobs: over gRPC end to end, and with a rank killed mid-chain.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cluster.contract.events import parse_lines

pytestmark = pytest.mark.slow

SAMPLER = {"chains": 4, "draws": 30, "burn_in": 0, "step_size": 1e-3, "nbeta": 10.0, "gamma": 100.0,
           "fetch_every": 10, "seed": 3, "init_loss": "full"}
RESTRICTIONS = [{"name": "full"}, {"name": "head", "weights": [{"kind": "head", "layer": 0, "head": 1}]},
                {"name": "layer1", "weights": [{"kind": "layer", "layer": 1}]}]


def job_spec(model_dir, data_file, job_id: str, **overrides) -> dict:
    return {"job_id": job_id, "model": {"local_path": str(model_dir)},
            "dataset": {"files": [str(data_file)], "context_length": 16},
            "sampler": {**SAMPLER, **overrides.pop("sampler", {})}, "restrictions": overrides.pop("restrictions", RESTRICTIONS),
            "batch_size": 8, "compute": {"ranks_per_chain": 2, "cpus_per_chain": 1, **overrides}}


@pytest.fixture(scope="module")
def ray_here(ray_head):
    import ray

    ray.init(address=ray_head.address, log_to_driver=False, configure_logging=False)
    yield ray_head
    ray.shutdown()


@pytest.fixture(scope="module")
def pair(ray_here, tiny_gpt2_dir, text_jsonl):
    """(2-rank group, single-process ChainWorker in this process, dataset key) on the same job spec."""
    import ray

    from cluster.placement import ChainResources
    from cluster.sharded import start_sharded_worker
    from cluster.contract.spec import JobSpec
    from cluster.workers import ChainWorker, dataset_key

    spec = JobSpec.from_dict(job_spec(tiny_gpt2_dir, text_jsonl, "pair"))
    group, placement = start_sharded_worker(ChainResources.from_compute(spec.compute), spec, None)
    single = ChainWorker(spec)
    summary = ray.get(group.prepare.remote(), timeout=600)
    single.prepare()
    yield group, single, dataset_key(spec.dataset), summary
    ray.kill(group)
    ray.util.remove_placement_group(placement)


def test_group_loads_partitions_and_the_same_restrictions(pair):
    group, single, key, summary = pair
    assert summary["preview"] == single.prepare()["preview"]  # restrictions resolved on the meta copy
    assert summary["model_provenance"]["num_parameters"] == single.prepare()["model_provenance"]["num_parameters"]
    assert summary["model_provenance"]["zero3_ranks"] == 2
    pids = {summary["pid"], *__import__("ray").get(group.where.remote())["rank_pids"]}
    assert len(pids) == 2


def test_noise_off_traces_match_the_single_process_engine(pair, monkeypatch):
    import ray
    import torch

    from cluster.engine.sgld import SGLD

    group, single, key, _ = pair
    init_sharded, init_single = ray.get(group.init_loss.remote(key)), single.init_loss(key)
    assert init_sharded == pytest.approx(init_single, rel=1e-6)  # every row once, under the same sharding
    ray.get(group.set_test_options.remote(noise=False))
    monkeypatch.setattr(SGLD, "_noise", lambda self, params: [torch.zeros_like(p) for p in params])
    for r, restriction in enumerate(RESTRICTIONS):
        sharded = ray.get(group.run_chains.remote(r, [0], [1], init_sharded))[0]
        reference = single.run_chains(r, [0], [1], init_single)[0]
        assert sharded["status"] == reference["status"] == "succeeded"
        np.testing.assert_allclose(sharded["loss_trace"], reference["loss_trace"], rtol=1e-5, atol=1e-6,
                                   err_msg=restriction["name"])
        np.testing.assert_allclose(sharded["init_trace"], reference["init_trace"], rtol=1e-5, atol=1e-6)
        assert sharded["loss_trace"] != reference["init_trace"], "the chain must move"
        assert sharded["llc"] == pytest.approx(reference["llc"], abs=1e-4)
        assert sharded["mala_acceptance"] == pytest.approx(reference["mala_acceptance"], abs=1e-4)
    ray.get(group.set_test_options.remote(noise=True))


def test_sharded_pairs_looked_up_equal_the_forward_at_w_star(pair):
    """L_m(w*) from the group's table (each rank's share of every row, summed over the ranks)
    equals the collective forward at w* it replaces, on a restriction that moves one head."""
    import ray

    group, _, key, _ = pair
    init = ray.get(group.init_loss.remote(key))
    runs = {}
    try:
        for how in ("forward", "table"):
            ray.get(group.set_test_options.remote(noise=False, anchor=how))
            runs[how] = ray.get(group.run_chains.remote(1, [0], [1], init))[0]
    finally:
        ray.get(group.set_test_options.remote())
    forward, table = runs["forward"], runs["table"]
    assert forward["status"] == table["status"] == "succeeded"
    np.testing.assert_array_equal(table["loss_trace"], forward["loss_trace"])  # the chain itself is untouched
    np.testing.assert_allclose(table["init_trace"], forward["init_trace"], rtol=1e-6, atol=1e-6)
    assert len(set(forward["init_trace"])) > 5  # batch-to-batch differences: the lookups found each batch's rows


def test_two_ranks_partitions_get_independent_noise(pair):
    import ray

    group, _, key, _ = pair
    init = ray.get(group.init_loss.remote(key))

    def moves(noise: bool) -> list[np.ndarray]:
        ray.get(group.set_test_options.remote(noise=noise, record_moves=True))
        ray.get(group.run_chains.remote(0, [1], [1], init))[0]
        return [np.concatenate(parts) for parts in ray.get(group.moves.remote())]

    try:
        off, on, again = moves(False), moves(True), moves(True)
    finally:
        ray.get(group.set_test_options.remote())
    kicks = [a - b for a, b in zip(on, off)]  # what the noise added, per rank
    assert kicks[0].shape == kicks[1].shape and kicks[0].size > 1000
    assert all(k.std() > 0.3 * np.sqrt(SAMPLER["step_size"]) for k in kicks)
    assert abs(np.corrcoef(kicks[0], kicks[1])[0, 1]) < 0.1  # a shared seed would give ~1
    for a, b in zip(on, again):
        np.testing.assert_array_equal(a, b)  # and each rank's stream is reproducible


def test_noise_on_llc_agrees_within_its_error_bar(pair):
    import ray

    group, single, key, _ = pair
    init_sharded, init_single = ray.get(group.init_loss.remote(key)), single.init_loss(key)
    chains = range(SAMPLER["chains"])
    runs = [ray.get(group.run_chains.remote(0, [c], [1], init_sharded))[0] for c in chains]
    sharded = np.array([r["llc"] for r in runs])
    assert runs[0]["loss_trace"] != runs[0]["init_trace"], runs[0]
    reference = np.array([single.run_chains(0, [c], [1], init_single)[0]["llc"] for c in chains])
    assert np.isfinite(sharded).all() and not np.array_equal(sharded, reference)  # other noise streams
    error = np.sqrt(sharded.var(ddof=1) / len(sharded) + reference.var(ddof=1) / len(reference))
    assert abs(sharded.mean() - reference.mean()) < 3 * error, (sharded, reference)
    paired = ray.get(group.run_chains.remote(0, [0], [1], None))[0]  # L_m(w*) on each draw's own batch
    assert paired["status"] == "succeeded" and paired["llc"] != 0 and paired["loss_trace"] != paired["init_trace"]


# -- whole jobs ------------------------------------------------------------------
def test_a_job_over_grpc_with_two_rank_chains_succeeds(ray_head, tmp_path, tiny_gpt2_dir, text_jsonl):
    from llc import Client
    from service.config import ServerConfig
    from service.server import BackgroundServer

    server = BackgroundServer(ServerConfig(address="127.0.0.1:0", store_url=str(tmp_path / "jobs.sqlite"),
                                           ray_dashboard_url=ray_head.dashboard_url)).start()
    try:
        client = Client(server.address, client_id="zero3")
        est = client.submit(str(tiny_gpt2_dir), str(text_jsonl), restrictions=["full=all", "head=head:0.1"],
                            chains=2, draws=20, burn_in=0, step_size=1e-3, nbeta=10.0, context_length=16,
                            batch_size=8, ranks_per_chain=2, cpus_per_chain=1)
        final = None
        for event in client.watch(est.id, timeout=600):
            if event.estimate is not None:
                final = event.estimate
    finally:
        server.stop()
    assert final is not None and final.state == "SUCCEEDED", final
    result = final.result
    assert [r.name for r in result.restrictions] == ["full", "head"]
    for r in result.restrictions:
        assert {c.state for c in r.chains} == {"SUCCEEDED"} and len(r.loss_traces[0]) == 20
        assert all(np.isfinite(r.llc_per_chain))
    assert result.provenance["model"]["zero3_ranks"] == 2 and result.provenance["spec"]["compute"]["ranks_per_chain"] == 2
    assert result["head"].moved_elements < result["full"].moved_elements


def test_a_rank_killed_mid_chain_is_retried(ray_head, tiny_gpt2_dir, text_jsonl):
    spec = job_spec(tiny_gpt2_dir, text_jsonl, "killrank", restrictions=[{"name": "full"}],
                    sampler={"chains": 2, "draws": 60})
    env = {**os.environ, "RAY_ADDRESS": ray_head.address, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
           "LLC_JOB_SPEC": json.dumps(spec)}
    proc = subprocess.Popen([sys.executable, "-m", "cluster.driver"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    events, killed = [], []
    deadline = time.monotonic() + 600
    try:
        for event in parse_lines(proc.stdout):
            events.append(event)
            if event["type"] == "progress" and not killed:
                os.kill(event["rank_pids"][1], signal.SIGKILL)  # rank 1, not the rank the pool talks to
                killed.append(event)
            assert time.monotonic() < deadline, events[-3:]
        assert proc.wait(timeout=60) == 0, events[-1:]
    finally:
        if proc.poll() is None:
            proc.kill()
    retrying = [e for e in events if e["type"] == "chain" and e["status"] == "retrying"]
    assert killed and len(retrying) == 1 and retrying[0]["chain"] == killed[0]["chain"]
    assert "worker process died" in retrying[0]["message"]
    (r,) = events[-1]["result"]["restrictions"]
    assert all(c["status"] == "succeeded" for c in r["chains"])
    retried = [c for c in r["chains"] if c["attempts"] == 2]
    assert [c["chain"] for c in retried] == [killed[0]["chain"]]
    assert killed[0]["rank_pids"][1] not in retried[0]["extra"]["rank_pids"]


def test_a_lean_memory_worker_checkpoints_activations_and_runs_default_settings(ray_here, tiny_gpt2_dir, text_jsonl):
    """The single-process alternative to sharding (compute.lean_memory): a chain worker on a bf16
    model turns on activation checkpointing and runs a chain with the default mala=true."""
    import math

    from cluster.contract.spec import JobSpec
    from cluster.workers import ChainWorker, dataset_key

    data = job_spec(tiny_gpt2_dir, text_jsonl, "lean", ranks_per_chain=1, lean_memory=True)
    data["model"]["dtype"] = "bfloat16"
    data["sampler"] = {k: v for k, v in data["sampler"].items() if k != "mala"}
    spec = JobSpec.from_dict(data)
    worker = ChainWorker(spec)
    summary = worker.prepare()
    assert summary["model_provenance"]["checkpointed_layers"] == 2 and summary["model_provenance"]["dtype"] == "bfloat16"
    key = dataset_key(spec.dataset)
    chain = worker.run_chains(0, [0], [1], worker.init_loss(key))[0]
    assert chain["status"] == "succeeded" and math.isfinite(chain["llc"]) and chain["mala_acceptance"] is None
