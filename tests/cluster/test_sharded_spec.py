"""Settings of sharded (ZeRO-3) chains: refused with a message naming what to change,
at submission (JobSpec, and a real llc.v1 server), before any Ray work. Fast."""
from __future__ import annotations

import pytest

from cluster.engine.zero3 import rank_seed
from cluster.contract.errors import InvalidField
from cluster.contract.spec import ComputeSpec, JobSpec


def spec(batch_size: int = 8, **compute) -> dict:
    return {"job_id": "j", "model": {"local_path": "/m"}, "dataset": {"files": ["/d.jsonl"]},
            "sampler": {"step_size": 1e-3, "nbeta": 10.0, "burn_in": 0}, "batch_size": batch_size, "compute": compute}


@pytest.mark.parametrize("compute,batch_size,field,says", [
    ({"gpus_per_chain": 2.5}, 8, "compute.gpus_per_chain", "whole number"),
    ({"gpus_per_chain": 2, "ranks_per_chain": 4}, 8, "compute.ranks_per_chain", "set gpus_per_chain=4"),
    ({"gpus_per_chain": 1, "ranks_per_chain": 2}, 8, "compute.ranks_per_chain", "one rank per GPU"),
    ({"gpus_per_chain": 0.5, "ranks_per_chain": 2}, 8, "compute.ranks_per_chain", "one rank per GPU"),
    ({"ranks_per_chain": 0}, 8, "compute.ranks_per_chain", "[1, 64]"),
    ({"ranks_per_chain": 2, "zero_stage": 2}, 8, "compute.zero_stage", "only ZeRO stage 3"),
    ({"ranks_per_chain": 3}, 8, "batch_size", "multiple of 3"),
    ({"gpus_per_chain": 4}, 6, "batch_size", "multiple of 4"),
])
def test_bad_sharded_settings_name_the_field(compute, batch_size, field, says):
    with pytest.raises(InvalidField) as err:
        JobSpec.from_dict(spec(batch_size, **compute))
    assert err.value.field == field and says in err.value.message


def test_ranks_follow_gpus_or_ranks_per_chain():
    assert ComputeSpec(gpus_per_chain=4).ranks == 4
    assert ComputeSpec(gpus_per_chain=4, ranks_per_chain=4).ranks == 4
    assert ComputeSpec(ranks_per_chain=2).ranks == 2
    assert ComputeSpec(gpus_per_chain=0.5).ranks == ComputeSpec().ranks == 1


def test_each_rank_of_each_chain_has_its_own_noise_seed():
    seeds = {rank_seed(7, c, r) for c in range(4) for r in range(4)}
    assert len(seeds) == 16 and rank_seed(7, 1, 0) == rank_seed(7, 1, 0) != rank_seed(8, 1, 0)


def test_server_refuses_an_unsupported_zero_stage_at_create(make_server):
    from llc import Client
    from llc.errors import InvalidArgument

    server = make_server()
    client = Client(server.address)
    with pytest.raises(InvalidArgument, match=r"compute\.zero_stage: only ZeRO stage 3") as err:
        client.submit("/models/m", "/data/d.jsonl", ranks_per_chain=2, zero_stage=2, step_size=1e-3, nbeta=10.0)
    assert err.value.code == "INVALID_ARGUMENT"
