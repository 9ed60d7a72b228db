"""Observables run: ours (engine + ObservableRecorder + Parquet artifact) against devinterp 2.0.1's
`sample()` with observables (Zarr), on the same model, data and SGLD settings.

    .venv/bin/python bench/observables_vs_devinterp.py                    # CPU, GPT-NeoX-shaped LM (~0.5M)
    .venv/bin/python bench/observables_vs_devinterp.py --model mlp --draws 50

Same model and tokens as bench/engine_vs_devinterp.py (trained briefly on a Markov chain),
batch 16 × 64 tokens, 2 observable datasets of 32 sequences each, per-token losses at every
draw, chains one after another on one process. Printed per contender: wall time of the whole
run (sampling + observables + writing the artifact), artifact bytes on disk, loss values
recorded, and the ratios. Ours writes the long Parquet table (zstd) the service streams;
devinterp writes its Zarr store (zstd level 0).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
_spec = importlib.util.spec_from_file_location("engine_vs_devinterp", ROOT / "bench" / "engine_vs_devinterp.py")
base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(base)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def run_ours(model, tokens, observables: dict[str, torch.Tensor], *, chains: int, draws: int, out: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cluster.contract.sampler import SamplerConfig

    from cluster.engine.estimate import estimate_llc
    from cluster.engine.observables import ObservableRecorder
    from cluster.observables import _table

    config = SamplerConfig(**base.SETTINGS, chains=chains, draws=draws, burn_in=0, seed=0, init_loss="full",
                           mala=False, fetch_every=max(1, min(100, draws)))
    sets = {name: [rows[i:i + base.BATCH] for i in range(0, len(rows), base.BATCH)] for name, rows in observables.items()}
    start = time.perf_counter()
    rec = ObservableRecorder(sets, loss_fn=base.per_token_loss, every=1, granularity="token")
    result = estimate_llc(model, base.mean_loss, base.TokenBatches(tokens, base.BATCH), config, observer=rec)
    table = pa.concat_tables([_table("full", c, rec.chain_losses(c), rec.draw_indices(c)) for c in rec.chains()])
    pq.write_table(table, out, compression="zstd")
    seconds = time.perf_counter() - start
    values = sum(v.size for v in rec.losses().values())
    return {"seconds": seconds, "bytes": dir_bytes(out), "values": values, "llc": result.llc_mean}


def run_devinterp(model, tokens, observables: dict[str, torch.Tensor], *, chains: int, draws: int, out: Path) -> dict:
    from datasets import Dataset
    from devinterp.slt.sampling import sample

    def ds(t):
        return Dataset.from_dict({"input_ids": t.tolist()}).with_format("torch")

    obs = {name: (ds(rows), len(rows) // base.BATCH) for name, rows in observables.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        tree = sample(model, ds(tokens), obs, lr=base.SETTINGS["step_size"], n_beta=base.SETTINGS["nbeta"],
                      localization=base.SETTINGS["gamma"], loss_fn=base.per_token_loss, num_chains=chains,
                      num_draws=draws, num_burnin_steps=0, batch_size=base.BATCH,
                      num_init_loss_batches=len(tokens) // base.BATCH, init_seed=0, device="cpu", output_path=out)
        seconds = time.perf_counter() - start
    values = sum(int(np.prod(tree.dataset[f"loss_{n}"].shape)) for n in observables)
    return {"seconds": seconds, "bytes": dir_bytes(out), "values": values}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="neox", choices=["neox", "mlp"])
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--examples", type=int, default=32, help="sequences per observable dataset")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = base.make_model(args.model)
    tokens = base.markov_tokens(base.SEQUENCES, base.SEQ, base.VOCAB, seed=0)
    base.train_briefly(model, tokens, steps=100)
    observables = {"probe_a": base.markov_tokens(args.examples, base.SEQ, base.VOCAB, seed=1),
                   "probe_b": base.markov_tokens(args.examples, base.SEQ, base.VOCAB, seed=2)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        ours = run_ours(model, tokens, observables, chains=args.chains, draws=args.draws, out=Path(tmp) / "losses.parquet")
        model.load_state_dict(initial)
        theirs = run_devinterp(model, tokens, observables, chains=args.chains, draws=args.draws,
                               out=Path(tmp) / "samples.zarr")
    for name, r in (("ours (Parquet)", ours), ("devinterp 2.0.1 (Zarr)", theirs)):
        rows.append(f"{name:24s} {r['seconds']:8.1f} s {r['bytes'] / 1e6:9.2f} MB {r['values']:>12,d} values "
                    f"{8 * r['bytes'] / max(r['values'], 1):6.2f} bits/value")
    print(f"model {args.model}, {args.chains} chains x {args.draws} draws, 2 observables x {args.examples} sequences "
          f"x {base.SEQ - 1} tokens, batch {base.BATCH}, threads {args.threads}")
    print("\n".join(rows))
    print(f"ratio ours/devinterp: time {ours['seconds'] / theirs['seconds']:.2f}x, size "
          f"{ours['bytes'] / theirs['bytes']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
