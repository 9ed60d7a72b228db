"""Observables end to end: a real llc.v1 server on 127.0.0.1, a 2-node local Ray cluster
(tests/fixtures/ray_nodes.py), two observable datasets; the artifact streams back through
FetchArtifact and the SDK reads it as pandas/xarray. Oversized requests are refused at submission."""
from __future__ import annotations

import numpy as np
from google.protobuf import json_format
import pytest

from llc import Client, LLCError
from llc.v1 import llc_pb2 as pb
from service.config import ServerConfig
from service.server import BackgroundServer

SMALL = dict(chains=2, draws=10, context_length=16, batch_size=4, step_size=1e-3, nbeta=10.0, burn_in=0)


@pytest.mark.slow
def test_two_observable_datasets_on_two_nodes_artifact_reads_back(ray_nodes, tmp_path, tiny_lm_dirs, text_jsonl,
                                                                  other_text_jsonl, tokens_jsonl):
    results = tmp_path / "results"
    server = BackgroundServer(ServerConfig(address="127.0.0.1:0", store_url=str(tmp_path / "jobs.sqlite"),
                                           ray_dashboard_url=ray_nodes.dashboard_url, results_dir=str(results))).start()
    try:
        client = Client(server.address, client_id="obs-e2e")
        observed = {"datasets": {"short": str(other_text_jsonl), "long": str(text_jsonl)}, "granularity": "token",
                    "every": 2, "max_examples": 4}
        # 8 units of 30 draws: enough work that both nodes' workers take units even when one loads late
        submitted = client.submit(str(tiny_lm_dirs["gpt2"]), str(text_jsonl), restrictions=["full=all", "l0=layer:0"],
                                  observables=observed, **{**SMALL, "chains": 4, "draws": 30})
        final = client.wait(submitted.id, timeout=300)
        assert final.state == "SUCCEEDED", final
        result = final.result
        assert len(result.restrictions) == 2
        est = client._call("GetEstimate", pb.GetEstimateRequest(estimate_id=submitted.id)).estimate
        # chain workers ran on both worker nodes (each wrote its chains' parts where it ran)
        workers = json_format.MessageToDict(est.result.provenance)["workers"]
        assert len({w["node_id"] for w in workers}) == 2, workers
        obs = est.result.observables
        assert {f.name for f in obs.files} == {"losses.parquet", "bif.parquet", "susceptibilities.parquet"}
        assert dict(obs.examples) == {"short": 4, "long": 4, "sampling": 4} and obs.every == 2
        assert set(obs.bif_mean) == {"full", "l0"} and set(obs.susceptibility_mean["l0"]) == {"short", "long"}
        # the artifact lives in the configured results directory, one directory per estimate
        assert (results / submitted.id / "losses.parquet").is_file()

        art = client.observables(submitted.id)
        losses = art.losses
        assert set(losses["observable"]) == {"short", "long", "sampling"}
        assert set(losses["restriction"]) == {"full", "l0"} and set(losses["chain"]) == {0, 1, 2, 3}
        da = art.to_xarray("l0", "short")
        assert da.dims == ("chain", "draw", "example", "token") and da.shape == (4, 15, 4, 15)
        assert np.isfinite(da.values).all()
        # small chunks reassemble to the same bytes
        assert client.fetch_artifact(submitted.id, "bif.parquet", chunk_bytes=100) == art.files["bif.parquet"]
        assert set(art.bif.columns) >= {"restriction", "observable_1", "example_1", "bif"}
        with pytest.raises(LLCError) as exc:
            client.fetch_artifact(submitted.id, "../jobs.sqlite")
        assert exc.value.code == "NOT_FOUND"
    finally:
        server.stop()


def test_oversized_observables_refused_at_submission(tmp_path):
    """RESOURCE_EXHAUSTED before Ray is asked or any file is read (no cluster, no model here)."""
    model, text, other = str(tmp_path / "model"), str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    server = BackgroundServer(ServerConfig(address="127.0.0.1:0", store_url=str(tmp_path / "jobs.sqlite"),
                                           ray_dashboard_url="http://127.0.0.1:9", results_dir=str(tmp_path / "r"),
                                           max_observable_values=100_000)).start()
    try:
        client = Client(server.address)
        with pytest.raises(LLCError) as exc:
            client.submit(model, text, observables={"datasets": {"short": other}, "granularity": "token",
                                       "max_examples": 64}, **{**SMALL, "draws": 1000})
        assert exc.value.code == "RESOURCE_EXHAUSTED"
        assert "--max-observable-values" in exc.value.message and "observables.every" in exc.value.message
        with pytest.raises(LLCError) as exc:
            client.submit(model, text, observables={"datasets": {"sampling": other}}, **SMALL)
        assert exc.value.code == "INVALID_ARGUMENT" and "observables.datasets[0].name" in exc.value.message
    finally:
        server.stop()


def test_artifact_paths_stay_in_the_results_directory_and_chunks_reassemble(tmp_path):
    from cluster.contract.errors import FailedPrecondition, NotFound
    from service.observables import artifact_path, chunks

    root = tmp_path / "results"
    (root / "est-1").mkdir(parents=True)
    (root / "est-1" / "losses.parquet").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "secret").write_text("x")
    doc = {"observables": {"files": {"losses.parquet": 2560}}}
    path = artifact_path(str(root), "est-1", doc, "")
    assert b"".join(c.data for c in chunks(path, "losses.parquet", 1000)) == bytes(range(256)) * 10
    assert [c.offset for c in chunks(path, "losses.parquet", 1000)] == [0, 1000, 2000]
    for name in ("../../secret", "bif.parquet", "/etc/passwd"):
        with pytest.raises(NotFound):
            artifact_path(str(root), "est-1", doc, name)
    with pytest.raises(FailedPrecondition):
        artifact_path(str(root), "est-1", {"restrictions": []}, "")
    with pytest.raises(Exception, match="inside the results directory"):
        artifact_path(str(root), "..", doc, "losses.parquet")


def test_fetch_artifact_only_for_the_estimates_owner(make_server, tmp_path):
    import grpc

    from llc.v1 import llc_pb2_grpc
    from service.states import JobState
    from tests.service.test_convert import result_document
    from tests.service.test_tenants import ALICE, BOB, OPS, as_, failure, stored, tokens_file

    results = tmp_path / "results"
    server = make_server(tokens_file=tokens_file(tmp_path), results_dir=str(results))
    (results / "est-a").mkdir(parents=True)
    (results / "est-a" / "losses.parquet").write_bytes(b"PAR1" * 1000)
    doc = {**result_document(), "job_id": "est-a",
           "observables": {"artifact": "est-a", "files": {"losses.parquet": 4000}, "granularity": "token", "every": 1,
                           "observables": {"code": 2}, "values": 10, "bif_mean": {}, "susceptibility_mean": {},
                           "warnings": []}}
    stored(server, "est-a", "alice", JobState.SUCCEEDED, result=doc)
    stored(server, "est-q", "alice", JobState.QUEUED)
    with grpc.insecure_channel(server.address) as channel:
        llc = llc_pb2_grpc.LLCServiceStub(channel)
        request = pb.FetchArtifactRequest(estimate_id="est-a", chunk_bytes=1500)
        for token in (ALICE, OPS):  # the owner, and an admin
            chunks = list(llc.FetchArtifact(request, metadata=as_(token), timeout=10))
            assert b"".join(c.data for c in chunks) == b"PAR1" * 1000 and chunks[-1].total_bytes == 4000
            assert len(chunks) == 3
        code, message = failure(llc.FetchArtifact, request, as_(BOB))
        missing = failure(llc.FetchArtifact, pb.FetchArtifactRequest(estimate_id="est-none"), as_(BOB))
        assert code == grpc.StatusCode.NOT_FOUND and message == missing[1].replace("est-none", "est-a")
        code, message = failure(llc.FetchArtifact, pb.FetchArtifactRequest(estimate_id="est-q"), as_(ALICE))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "observables" in message
        code, _ = failure(llc.FetchArtifact, pb.FetchArtifactRequest(estimate_id="est-a", chunk_bytes=64 << 20),
                          as_(ALICE))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        got = llc.GetEstimate(pb.GetEstimateRequest(estimate_id="est-a"), metadata=as_(ALICE), timeout=10)
        assert [f.name for f in got.estimate.result.observables.files] == ["losses.parquet"]
