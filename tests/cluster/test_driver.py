"""The job driver's parts that need no Ray cluster: placement, retries, results, error events.

The driver against real Ray clusters is in tests/cluster/test_ray_cluster.py.
"""
from __future__ import annotations

import json

import pytest

from cluster import driver
from cluster.contract.errors import FailedPrecondition
from cluster.contract.events import parse_lines
from cluster.placement import ChainResources, cluster_capacity, pool_size
from cluster.result_document import result_document
from cluster.contract.spec import ComputeSpec, JobSpec


def make_spec(**overrides) -> JobSpec:
    data = {
        "job_id": "job-1",
        "model": {"local_path": "/nonexistent/model"},
        "dataset": {"files": ["/nonexistent/train.jsonl"], "context_length": 16},
        "sampler": {"chains": 3, "draws": 10, "seed": 5},
        "restrictions": [{"name": "full"}, {"name": "layer0", "weights": [{"kind": "layer", "layer": 0}]}],
    }
    data.update(overrides)
    return JobSpec.from_dict(data)


# -- placement -----------------------------------------------------------------
@pytest.mark.parametrize("cpus,gpus,node,expected", [
    (1, 0, {"CPU": 4}, 4),
    (1.5, 0, {"CPU": 4}, 2),
    (1, 0.25, {"CPU": 8, "GPU": 1}, 4),  # fractional GPUs: four chains share one GPU
    (1, 0.3, {"CPU": 8, "GPU": 0.9}, 3),  # 0.3 * 3 is 0.8999... in floats
    (2, 1, {"CPU": 8, "GPU": 2}, 2),
    (1, 1, {"CPU": 8}, 0),  # a CPU-only node holds no GPU chain
    (1, 0, {"CPU": 0}, 0),  # a head node started with --num-cpus=0
])
def test_chains_per_node(cpus, gpus, node, expected):
    assert ChainResources(cpus, gpus).chains_on(node) == expected


def test_pool_has_one_worker_per_chain_slot_and_no_more_than_units():
    r = ChainResources(1, 0)
    nodes = [{"CPU": 0}, {"CPU": 2}, {"CPU": 3}]
    assert cluster_capacity(r, nodes) == 5
    assert pool_size(r, nodes, units=100) == 5
    assert pool_size(r, nodes, units=2) == 2
    assert pool_size(r, nodes, units=100, max_workers=1) == 1


@pytest.mark.parametrize("resources,nodes,expected", [
    (ChainResources(1, 1), [{"CPU": 8}], "set compute.gpus_per_chain=0"),
    (ChainResources(4, 0), [{"CPU": 2}, {"CPU": 1}], "set compute.cpus_per_chain to at most 2"),
    (ChainResources(16, 1), [{"CPU": 8, "GPU": 2}], "lower compute.cpus_per_chain or compute.gpus_per_chain"),
])
def test_a_chain_that_fits_no_node_fails_early_naming_the_setting(resources, nodes, expected):
    with pytest.raises(FailedPrecondition, match=expected.replace(".", r"\.")):
        cluster_capacity(resources, nodes)


def test_sharded_chains_plan_one_packed_bundle_per_rank():
    r = ChainResources.from_compute(ComputeSpec(gpus_per_chain=4, cpus_per_chain=8))
    assert r.sharded and r.ranks == 4
    assert r.placement_group_bundles() == [{"GPU": 1.0, "CPU": 2.0}] * 4
    cpu = ChainResources.from_compute(ComputeSpec(ranks_per_chain=2, cpus_per_chain=1))
    assert cpu.sharded and cpu.placement_group_bundles() == [{"CPU": 0.5}] * 2
    assert cpu.chains_on({"CPU": 2}) == 2  # both ranks of a chain on one node
    assert not ChainResources(1, 0.5).sharded
    assert ChainResources(1, 0.5).actor_options() == {"num_cpus": 1.0, "num_gpus": 0.5}
    with pytest.raises(FailedPrecondition, match="4 ZeRO-3 ranks packed on one node.*gpus_per_chain to at most 2"):
        cluster_capacity(r, [{"CPU": 64, "GPU": 2}, {"CPU": 64, "GPU": 2}])


# -- results -------------------------------------------------------------------
def chain_dict(chain: int, llc: float, status: str = "succeeded", node: str = "n1", init_trace=None) -> dict:
    return {"chain": chain, "seed": 100 + chain, "llc": llc, "status": status,
            "loss_trace": [1.0 + 0.01 * i for i in range(8)], "init_trace": init_trace or [],
            "mala_acceptance": 0.9, "frac_below_init": 0.1, "steps": 8, "message": "", "attempts": 1,
            "extra": {"node_id": node}}


def test_result_document_combines_chains_from_several_workers():
    spec = make_spec()
    results = {(0, 2): chain_dict(2, 3.0, node="b"), (0, 0): chain_dict(0, 1.0, node="a"),
               (0, 1): chain_dict(1, float("nan"), status="diverged", node="b"),
               (1, 0): chain_dict(0, 0.5), (1, 1): chain_dict(1, 0.7), (1, 2): chain_dict(2, 0.9)}
    previews = [{"name": "full", "tensors": [{"name": "w", "shape": [4, 4], "elements": 16}], "elements": 16},
                {"name": "layer0", "tensors": [{"name": "w", "shape": [4, 4], "elements": 8}], "elements": 8}]
    doc = result_document(spec, results, [0.9, 0.9], previews, {"spec": spec.to_dict()})
    assert doc["job_id"] == "job-1" and [r["name"] for r in doc["restrictions"]] == ["full", "layer0"]
    full = doc["restrictions"][0]
    assert [c["chain"] for c in full["chains"]] == [0, 1, 2]  # in chain order whatever order they finished
    assert full["llc_mean"] == pytest.approx(2.0)  # the diverged chain is not averaged in
    assert full["diagnostics"]["diverged_chains"] == [1]
    assert full["moved_elements"] == 16 and full["moved_tensors"][0]["name"] == "w"
    assert [c["extra"]["node_id"] for c in full["chains"]] == ["a", "b", "b"]
    assert doc["provenance"]["seeds"]["chains"] == [100, 101, 102]
    assert "finished_at" in doc["provenance"]
    json.dumps(doc)  # serialisable (NaN allowed, as the events encode it)


def test_partial_result_leaves_out_restrictions_without_chains_and_pairs_init_loss():
    spec = make_spec(sampler={"chains": 2, "draws": 10, "init_loss": "paired"})
    results = {(1, 0): chain_dict(0, 0.5, init_trace=[0.5] * 8), (1, 1): chain_dict(1, 0.7, init_trace=[0.7] * 8)}
    doc = result_document(spec, results, [None, None], None, {})
    assert [r["name"] for r in doc["restrictions"]] == ["layer0"]
    assert doc["restrictions"][0]["init_loss"] == pytest.approx(0.6)  # mean of the paired L(w*) draws
    assert doc["provenance"]["seeds"]["chains"] == [100, 101]


# -- the driver's error events (no cluster needed) --------------------------------
def run_main(argv, capsys) -> tuple[int, list[dict]]:
    code = driver.main(argv)
    return code, list(parse_lines(capsys.readouterr().out.splitlines()))


def test_driver_without_a_spec_says_how_to_give_one(monkeypatch, capsys):
    monkeypatch.delenv("LLC_JOB_SPEC", raising=False)
    code, events = run_main([], capsys)
    assert code == 1 and [e["type"] for e in events] == ["error"]
    assert events[0]["code"] == "INVALID_ARGUMENT" and "LLC_JOB_SPEC" in events[0]["message"]


def test_driver_names_the_bad_field_of_a_spec(monkeypatch, capsys):
    bad = make_spec().to_dict()
    bad["sampler"]["step_size"] = -1
    monkeypatch.setenv("LLC_JOB_SPEC", json.dumps(bad))
    code, events = run_main([], capsys)
    assert code == 1 and events[-1]["code"] == "INVALID_ARGUMENT"
    assert "sampler.step_size" in events[-1]["message"]


def test_driver_spec_file_that_does_not_exist(tmp_path, capsys):
    code, events = run_main(["--spec", str(tmp_path / "missing.json")], capsys)
    assert code == 1 and events[-1]["code"] == "INVALID_ARGUMENT" and "missing.json" in events[-1]["message"]


def test_driver_without_a_ray_cluster_says_how_to_reach_one(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path = tmp_path / "spec.json"
    path.write_text(make_spec().to_json())
    code, events = run_main(["--spec", str(path)], capsys)
    assert code == 1 and events[-1]["code"] == "UNAVAILABLE"
    assert "RAY_ADDRESS" in events[-1]["message"] and "--local" in events[-1]["message"]


def test_driver_with_a_dead_ray_address_fails_fast(monkeypatch, tmp_path, capsys):
    from cluster.local_ray import free_port

    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    path = tmp_path / "spec.json"
    path.write_text(make_spec().to_json())
    code, events = run_main(["--spec", str(path)], capsys)
    assert code == 1 and events[-1]["code"] == "UNAVAILABLE" and "RAY_ADDRESS=127.0.0.1:" in events[-1]["message"]
