"""Observables of a job on the cluster: the example sets, the per-chain part files and the artifact.

Workers (cluster.workers) record each chain's losses with cluster.engine.observables and
write them, where they were computed, as one Parquet part per (restriction, chain) under

    $LLC_RESULTS_DIR/<job_id>/parts/r<restriction>-c<chain>.parquet

(the results directory the deployment configures, `llc-server serve --results-dir`; on a
multi-node cluster it must be a directory every node shares, e.g. an NFS or object-store
mount). When the chains are done, the driver merges the parts into `losses.parquet`, computes
the BIF and susceptibilities from it (cluster.engine.influence) into `bif.parquet` and
`susceptibilities.parquet`, and puts a small summary and the file names into the result
document. Clients stream the files with the FetchArtifact RPC.

losses.parquet is a long table: restriction, observable, chain, draw (index among the
chain's draws), example, token (-1 per sequence), loss (float32).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cluster.contract.errors import FailedPrecondition, InvalidArgument
from cluster.contract.spec import SAMPLING_OBSERVABLE, JobSpec

RESULTS_DIR_ENV = "LLC_RESULTS_DIR"
ARTIFACT_FILES = ("losses.parquet", "bif.parquet", "susceptibilities.parquet")


def results_dir() -> Path:
    value = os.environ.get(RESULTS_DIR_ENV, "")
    if not value:
        raise FailedPrecondition(f"observables need a results directory: set {RESULTS_DIR_ENV} in the job's "
                                 "environment (llc-server serve --results-dir DIR)")
    return Path(value).resolve()


def artifact_dir(job_id: str, root: Path | None = None) -> Path:
    """<results dir>/<job_id>, refused if it would leave the results directory."""
    root = (root or results_dir()).resolve()
    path = (root / job_id).resolve()
    if path.parent != root:
        raise InvalidArgument(f"job id {job_id!r} does not name a directory inside the results directory")
    return path


# ------------------------------------------------------------------ workers

def token_losses(model, batch):
    """Per-token next-token cross-entropy (batch, tokens - 1), float32 (cluster.datasets.lm_loss, unreduced)."""
    import torch.nn.functional as F

    logits = model(input_ids=batch, use_cache=False).logits[:, :-1]  # no KV cache: nothing decodes later
    targets = batch[:, 1:]
    flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none")
    return flat.reshape(targets.shape)


def example_sets(spec: JobSpec, datasets: dict[str, Any], key_of) -> dict[str, list]:
    """name → fixed batches (the first max_examples rows) of each observable dataset.

    `datasets`: dataset key → TokenDataset already loaded by the worker; `key_of(ref)` its key."""
    obs = spec.observables
    size = spec.batch_size
    out: dict[str, list] = {}
    refs = [(d.name, d.dataset) for d in obs.datasets]
    if obs.include_sampling:
        refs.append((SAMPLING_OBSERVABLE, spec.dataset))
    for name, ref in refs:
        rows = datasets[key_of(ref)].input_ids[: obs.max_examples]
        out[name] = [rows[i:i + size] for i in range(0, rows.shape[0], size)]
    return out


def recorder(spec: JobSpec, sets: dict[str, list]):
    from cluster.engine.observables import ObservableRecorder

    obs = spec.observables
    return ObservableRecorder(sets, loss_fn=token_losses, every=obs.every, granularity=obs.granularity)


def _table(restriction: str, chain: int, losses: dict[str, np.ndarray], draws: np.ndarray):
    import pyarrow as pa

    parts = []
    for name, values in losses.items():
        if values.ndim == 1:  # nothing recorded
            continue
        records, examples = values.shape[:2]
        tokens = values.shape[2] if values.ndim == 3 else 1
        count = records * examples * tokens
        grid = np.indices((records, examples, tokens)).reshape(3, -1)
        parts.append(pa.table({
            "restriction": pa.array([restriction] * count, pa.string()).dictionary_encode(),
            "observable": pa.array([name] * count, pa.string()).dictionary_encode(),
            "chain": pa.array(np.full(count, chain, np.int32)),
            "draw": pa.array(draws[grid[0]].astype(np.int32)),
            "example": pa.array(grid[1].astype(np.int32)),
            "token": pa.array(grid[2].astype(np.int32) if values.ndim == 3 else np.full(count, -1, np.int32)),
            "loss": pa.array(values.reshape(-1).astype(np.float32)),
        }))
    return pa.concat_tables(parts) if parts else None


def write_part(job_id: str, restriction_index: int, restriction: str, chain: int, rec) -> dict[str, Any]:
    """Write one chain's records as a Parquet part (atomically: a retried chain replaces it)."""
    import pyarrow.parquet as pq

    directory = artifact_dir(job_id) / "parts"
    directory.mkdir(parents=True, exist_ok=True)
    table = _table(restriction, chain, rec.chain_losses(chain), rec.draw_indices(chain))
    path = directory / f"r{restriction_index}-c{chain}.parquet"
    if table is None:
        return {"part": None, "records": 0}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return {"part": str(path.relative_to(artifact_dir(job_id))), "records": int(rec.draw_indices(chain).size),
            "bytes": path.stat().st_size}


# ------------------------------------------------------------------ driver

def losses_array(frame, restriction: str, observable: str) -> np.ndarray:
    """(chains, draws, examples[, tokens]) of one restriction and observable from the long table
    (pandas DataFrame of losses.parquet); only the draws every chain recorded."""
    sub = frame[(frame["restriction"] == restriction) & (frame["observable"] == observable)]
    if sub.empty:
        raise KeyError(f"no losses of restriction {restriction!r} and observable {observable!r}")
    chains = np.sort(sub["chain"].unique())
    draws = np.sort(sub["draw"].unique())
    examples = int(sub["example"].max()) + 1
    per_token = bool((sub["token"] >= 0).any())
    tokens = int(sub["token"].max()) + 1 if per_token else 1
    out = np.full((chains.size, draws.size, examples, tokens), np.nan, np.float32)
    ci = np.searchsorted(chains, sub["chain"].to_numpy())
    di = np.searchsorted(draws, sub["draw"].to_numpy())
    out[ci, di, sub["example"].to_numpy(), np.maximum(sub["token"].to_numpy(), 0)] = sub["loss"].to_numpy()
    complete = ~np.isnan(out).any(axis=(0, 2, 3))  # draws a chain lacks (it diverged early) are dropped
    out = out[:, complete]
    return out if per_token else out[..., 0]


def finish_artifact(spec: JobSpec, chain_results: dict[tuple[int, int], dict[str, Any]],
                    init_losses: list[float | None] | None = None) -> dict[str, Any]:
    """Merge the parts, compute BIF and susceptibilities, write them; → the result document's `observables`."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cluster.engine.influence import bif, susceptibilities

    obs = spec.observables
    directory = artifact_dir(spec.job_id)
    parts = []
    for (r, c), doc in sorted(chain_results.items()):
        part = ((doc.get("extra") or {}).get("observables") or {}).get("part")
        if doc.get("status") == "succeeded" and part:
            parts.append(pq.read_table(directory / part))
    if not parts:
        return {"artifact": spec.job_id, "files": {}, "warnings": ["no chain recorded observables"]}
    table = pa.concat_tables([p.cast(parts[0].schema) for p in parts]).combine_chunks()
    pq.write_table(table, directory / "losses.parquet", compression="zstd")
    frame = table.to_pandas()
    frame["restriction"] = frame["restriction"].astype(str)
    frame["observable"] = frame["observable"].astype(str)
    names = [n for n in obs.names() if (frame["observable"] == n).any()]
    restrictions = [r.name for r in spec.restrictions if (frame["restriction"] == r.name).any()]
    warnings: list[str] = []

    # BIF per restriction: per-sequence correlation over (chain, draw) between every pair of recorded examples
    rows, summary_bif = [], {}
    for rname in restrictions:
        arrays = {n: losses_array(frame, rname, n) for n in names}
        seq = {n: (a.mean(axis=-1) if a.ndim == 4 else a) for n, a in arrays.items()}
        joint = np.concatenate([seq[n] for n in names], axis=2)
        if joint.shape[0] * joint.shape[1] < 2:
            warnings.append(f"restriction {rname!r}: fewer than 2 recorded draws, no BIF")
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = bif(joint)
        labels = [(n, i) for n in names for i in range(seq[n].shape[2])]
        ia, ib = np.triu_indices(len(labels))
        rows.append(pd.DataFrame({
            "restriction": rname,
            "observable_1": [labels[i][0] for i in ia], "example_1": [labels[i][1] for i in ia],
            "observable_2": [labels[j][0] for j in ib], "example_2": [labels[j][1] for j in ib],
            "bif": corr[ia, ib].astype(np.float32)}))
        offsets = np.cumsum([0] + [seq[n].shape[2] for n in names])
        means = {}
        for x, a in enumerate(names):
            for y, b in enumerate(names[x:], start=x):
                block = corr[offsets[x]:offsets[x + 1], offsets[y]:offsets[y + 1]]
                if a == b:
                    block = block[~np.eye(block.shape[0], dtype=bool)]
                means[f"{a}|{b}"] = float(np.nanmean(block)) if block.size else None
        summary_bif[rname] = means
    if rows:
        pq.write_table(pa.Table.from_pandas(pd.concat(rows, ignore_index=True), preserve_index=False),
                       directory / "bif.parquet", compression="zstd")

    # Susceptibilities per (weight restriction, observable), the sampling observable as the sampling task
    summary_chi: dict[str, dict[str, float]] = {}
    if obs.include_sampling and len(restrictions) > 1:
        probes = [n for n in names if n != SAMPLING_OBSERVABLE]
        chi_rows = []
        for rname in restrictions:
            arrays = {n: losses_array(frame, rname, n) for n in [SAMPLING_OBSERVABLE, *probes]}
            chi = susceptibilities(arrays, SAMPLING_OBSERVABLE, observables=probes)
            summary_chi[rname] = {n: float(np.mean(v)) for n, v in chi.items()}
            for n, v in chi.items():
                v2 = v if v.ndim == 2 else v[:, None]
                ex, tok = np.indices(v2.shape).reshape(2, -1)
                chi_rows.append(pd.DataFrame({"restriction": rname, "observable": n, "example": ex,
                                              "token": tok if v.ndim == 2 else -1, "susceptibility": v2.reshape(-1)}))
        if chi_rows:
            pq.write_table(pa.Table.from_pandas(pd.concat(chi_rows, ignore_index=True), preserve_index=False),
                           directory / "susceptibilities.parquet", compression="zstd")
    elif obs.include_sampling:
        warnings.append("susceptibilities compare weight restrictions: give more than one restriction")

    files = {f: (directory / f).stat().st_size for f in ARTIFACT_FILES if (directory / f).exists()}
    return {
        "artifact": spec.job_id,
        "files": files,
        "granularity": obs.granularity,
        "every": obs.every,
        "observables": {n: int(frame.loc[frame["observable"] == n, "example"].max()) + 1 for n in names},
        "values": int(table.num_rows),
        "bif_mean": summary_bif,
        "susceptibility_mean": summary_chi,
        "warnings": warnings,
    }
