"""Observables on a tiny language model: the cluster glue (cluster/observables.py: example sets,
per-chain Parquet parts, the merged artifact with BIF and susceptibilities) and agreement with
devinterp 2.0.1's compute_bif / compute_susceptibilities on the same recorded losses.

Agreement is matched by feeding devinterp the losses our chains recorded, laid out as its
`sample()` DataTree (loss_<obs> with dims chain, draw, batch_<obs>, token_pos; input_ids_<obs>;
init_loss), so both compute from identical numbers; the samplers themselves differ (RNG streams).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cluster.datasets import lm_loss, load_token_dataset, make_batches
from cluster.contract.sampler import SamplerConfig
from cluster.engine.estimate import estimate_llc
from cluster.engine.influence import bif, susceptibilities
from cluster.models import load_model
from cluster.contract.spec import DatasetRef, JobSpec, ModelRef
from cluster import observables
from cluster.workers import dataset_key, dataset_refs

CHAINS, DRAWS = 2, 30


@pytest.fixture(scope="module")
def recorded(tiny_lm_dirs, text_jsonl, other_text_jsonl, tmp_path_factory):
    """Two restrictions (full, the first layer's attention) × 2 chains, token losses of 2 observable sets."""
    results = tmp_path_factory.mktemp("results")
    mp = pytest.MonkeyPatch()
    mp.setenv(observables.RESULTS_DIR_ENV, str(results))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a chain worker with one CPU; on a loaded machine 2 threads are ~20x slower
    spec = JobSpec.from_dict({
        "job_id": "obs-test", "model": {"local_path": str(tiny_lm_dirs["gpt2"])},
        "dataset": {"files": [str(text_jsonl)], "context_length": 12},
        "sampler": {"step_size": 1e-3, "nbeta": 30.0, "burn_in": 0, "draws": DRAWS, "chains": CHAINS, "seed": 1,
                    "fetch_every": 7},
        "restrictions": [{"name": "full"}, {"name": "attn0", "weights": [{"kind": "pattern", "pattern": "transformer.h.0.attn.*"}]}],
        "batch_size": 4,
        "observables": {"datasets": [{"name": "other", "dataset": {"files": [str(other_text_jsonl)], "context_length": 12}}],
                        "granularity": "token", "every": 2, "max_examples": 6},
    })
    loaded = load_model(ModelRef(local_path=str(tiny_lm_dirs["gpt2"])))
    model = loaded.model
    vocab = model.get_input_embeddings().num_embeddings
    datasets = {k: load_token_dataset(ref, loaded.tokenizer, loaded.max_positions, vocab_size=vocab)
                for k, ref in dataset_refs(spec).items()}
    sets = observables.example_sets(spec, datasets, dataset_key)
    batches = make_batches(datasets[dataset_key(spec.dataset)], spec.batch_size)
    names = dict(model.named_parameters())
    params = {"full": None, "attn0": [n for n in names if n.startswith("transformer.h.0.attn.")]}
    recorders, chain_docs = {}, {}
    for r, rname in enumerate(["full", "attn0"]):
        rec = observables.recorder(spec, sets)
        result = estimate_llc(model, lm_loss, batches, spec.sampler, params=params[rname], observer=rec)
        recorders[rname] = rec
        for c in range(CHAINS):
            part = observables.write_part(spec.job_id, r, rname, c, rec)
            chain_docs[(r, c)] = {"status": result.chains[c].status, "extra": {"observables": part}}
    doc = observables.finish_artifact(spec, chain_docs)
    torch.set_num_threads(threads)
    yield spec, recorders, doc, results, loaded, sets
    mp.undo()


def test_token_losses_are_lm_loss_unreduced(recorded):
    *_, loaded, sets = recorded
    batch = sets["other"][0]
    with torch.no_grad():
        assert torch.allclose(observables.token_losses(loaded.model, batch).mean(), lm_loss(loaded.model, batch))


def test_artifact_files_and_summary(recorded):
    import pandas as pd

    spec, recorders, doc, results, *_ = recorded
    assert set(doc["files"]) == {"losses.parquet", "bif.parquet", "susceptibilities.parquet"}
    assert doc["observables"] == {"other": 6, "sampling": 6}
    records = -(-DRAWS // 2)
    assert doc["values"] == 2 * CHAINS * records * 12 * 11  # restrictions × chains × records × examples × tokens
    frame = pd.read_parquet(results / "obs-test" / "losses.parquet")
    for col in ("restriction", "observable"):
        frame[col] = frame[col].astype(str)
    # the long table reads back to exactly what the chains recorded
    for rname, rec in recorders.items():
        for name in ("other", "sampling"):
            assert np.array_equal(observables.losses_array(frame, rname, name), rec.losses()[name])
    assert set(doc["bif_mean"]) == {"full", "attn0"}
    assert set(doc["susceptibility_mean"]["attn0"]) == {"other"}
    chi = pd.read_parquet(results / "obs-test" / "susceptibilities.parquet")
    ours = susceptibilities(recorders["attn0"].losses(), "sampling", observables=["other"])["other"]
    got = chi[(chi["restriction"].astype(str) == "attn0")].sort_values(["example", "token"])["susceptibility"].to_numpy()
    assert np.allclose(got, ours.reshape(-1))
    with pytest.raises(Exception, match="inside the results directory"):
        observables.artifact_dir("..")


# ------------------------------------------------------------------ devinterp 2.0.1

def _datatree(losses: dict[str, np.ndarray], init_loss: float):
    """Our recorded losses laid out as devinterp's sample() DataTree."""
    xr = pytest.importorskip("xarray")
    data = {}
    for name, values in losses.items():
        c, d, b, t = values.shape
        data[f"loss_{name}"] = xr.DataArray(values, dims=("chain", "draw", f"batch_{name}", "token_pos"))
        data[f"input_ids_{name}"] = xr.DataArray(np.zeros((b, t + 1), np.int64), dims=(f"batch_{name}", "token"))
    first = next(iter(losses.values()))
    data["init_loss"] = xr.DataArray(np.full(first.shape[:2], init_loss, np.float32), dims=("chain", "draw"))
    return xr.DataTree(dataset=xr.Dataset(data))


@pytest.mark.parametrize("method,pooling,covariance", [("sequence", "stack", False), ("sequence", "mean", True),
                                                        ("token", "stack", False), ("token", "mean", True)])
def test_bif_agrees_with_devinterp(recorded, method, pooling, covariance):
    pytest.importorskip("devinterp")
    from devinterp.slt.bif import compute_bif

    _, recorders, *_ = recorded
    losses = recorders["full"].losses()
    theirs = compute_bif(_datatree(losses, 0.0), correlation_method=method, reduce_chain_dimension_method=pooling,
                         compute_covariance=covariance, device="cpu")["influences"].values
    # devinterp concatenates observables in sorted name order
    joint = np.concatenate([losses[k] for k in sorted(losses)], axis=2)
    ours = bif(joint, granularity=method, pooling=pooling, covariance=covariance)
    assert theirs.shape == ours.shape
    # devinterp computes in float32 (torch), ours in float64
    assert np.allclose(ours, theirs, rtol=1e-4, atol=1e-5 if not covariance else 1e-7)


def test_susceptibilities_agree_with_devinterp(recorded):
    pytest.importorskip("devinterp")
    from devinterp.slt.susceptibilities import compute_susceptibilities

    _, recorders, *_ = recorded
    full, attn = recorders["full"].losses(), recorders["attn0"].losses()
    init = 1.7
    wr_map = {"full": _datatree(full, init), "attn0": _datatree(attn, init)}
    out = compute_susceptibilities(wr_map, "sampling")
    theirs = out["susceptibilities"].dataset["sus"].sel(wr="attn0").values.reshape(6, 11)
    ours = susceptibilities(attn, "sampling", full=full, init_loss=init, centering="full")["other"]
    assert np.allclose(ours, theirs, rtol=1e-4, atol=1e-6)
    # the paper's covariance (our default) differs from devinterp's estimator by E[φ]·(shift of the mean loss gap)
    paper = susceptibilities(attn, "sampling")["other"]
    phi = attn["sampling"].astype(np.float64).mean(axis=(2, 3)) - init
    gap_r = attn["sampling"].astype(np.float64).mean() - attn["other"].astype(np.float64).mean(axis=(0, 1))
    gap_f = full["sampling"].astype(np.float64).mean() - full["other"].astype(np.float64).mean(axis=(0, 1))
    assert np.allclose(ours - paper, phi.mean() * (gap_r - gap_f), atol=1e-6)


def test_sequence_granularity_artifact_round_trip(tmp_path, monkeypatch):
    """Per-sequence records through parts → losses.parquet → arrays, BIF and susceptibilities (no model)."""
    import pandas as pd

    from cluster.engine.observables import ObservableRecorder

    monkeypatch.setenv(observables.RESULTS_DIR_ENV, str(tmp_path))
    spec = JobSpec.from_dict({
        "job_id": "seq", "model": {"local_path": "/m"}, "dataset": {"files": ["/a.jsonl"]},
        "sampler": {"step_size": 1e-3, "nbeta": 10.0, "burn_in": 0, "draws": 8, "chains": 2},
        "restrictions": [{"name": "full"}, {"name": "part", "weights": [{"kind": "layer", "layer": 0}]}],
        "observables": {"datasets": [{"name": "p", "dataset": {"files": ["/b.jsonl"]}}], "max_examples": 3}})
    rng = np.random.default_rng(0)
    arrays, docs = {}, {}
    for r, rname in enumerate(["full", "part"]):
        rec = ObservableRecorder({"p": [], "sampling": []}, loss_fn=None, every=2, granularity="sequence")
        for c in range(2):
            values = {"p": rng.normal(size=(4, 3)).astype(np.float32), "sampling": rng.normal(size=(4, 3)).astype(np.float32)}
            rec._store(c, values, np.arange(4) * 2)
            docs[(r, c)] = {"status": "succeeded", "extra": {"observables": observables.write_part("seq", r, rname, c, rec)}}
        arrays[rname] = rec.losses()
    doc = observables.finish_artifact(spec, docs)
    assert doc["observables"] == {"p": 3, "sampling": 3} and doc["values"] == 2 * 2 * 4 * 6
    frame = pd.read_parquet(tmp_path / "seq" / "losses.parquet")
    frame["restriction"], frame["observable"] = frame["restriction"].astype(str), frame["observable"].astype(str)
    assert (frame["token"] == -1).all() and sorted(frame["draw"].unique()) == [0, 2, 4, 6]
    assert np.array_equal(observables.losses_array(frame, "part", "p"), arrays["part"]["p"])
    bif_table = pd.read_parquet(tmp_path / "seq" / "bif.parquet")
    joint = np.concatenate([arrays["full"]["p"], arrays["full"]["sampling"]], axis=2)
    row = bif_table[(bif_table["restriction"].astype(str) == "full") & (bif_table["example_1"] == 0)
                    & (bif_table["example_2"] == 1) & (bif_table["observable_1"].astype(str) == "p")
                    & (bif_table["observable_2"].astype(str) == "p")]
    assert np.isclose(row["bif"].iloc[0], bif(joint)[0, 1], atol=1e-6)
    chi = susceptibilities(arrays["part"], "sampling", observables=["p"])["p"]
    assert np.isclose(doc["susceptibility_mean"]["part"]["p"], chi.mean())
