"""Per-rank memory and s/step of a ZeRO-3 chain against the single-process engine (and its lean mode).

    .venv/bin/python bench/zero3_memory.py --hidden 256 --layers 4 --steps 20 --ranks 2

Builds a random GPT-2 of the given shape, then runs, each in its own processes:
  single   the engine's full-weight chain in one process (fp32: weights, w*, gradients)
  lean     the same chain of the bf16 model with memory="lean" (cluster.engine.lean)
  zero3 g  one chain over g gloo ranks under DeepSpeed ZeRO-3 (torch.distributed.run)
and prints, per process, the bytes of what the chain keeps (weights, gradients, w*, measured
from the tensors: they should fall as 1/g), the peak RSS growth during the chain (adds
activations, gathered layers and the runtime's buffers) and seconds per SGLD step. On CUDA
it adds torch.cuda.max_memory_allocated. MALA is off, so no other copies are kept.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _setup(args):
    import torch

    from cluster.datasets import load_token_dataset, make_batches
    from cluster.contract.sampler import SamplerConfig
    from cluster.contract.spec import DatasetRef, ModelRef

    torch.set_num_threads(1)
    ref = ModelRef(local_path=args.model, dtype="bfloat16" if args.mode == "lean" else "float32")
    config = SamplerConfig(step_size=1e-5, nbeta=10.0, gamma=100.0, chains=1, draws=args.steps, burn_in=0,
                           fetch_every=args.steps, init_loss="paired", mala=False)
    return ref, config, DatasetRef(files=[args.data], context_length=args.context), load_token_dataset, make_batches


def run_single(args) -> dict:
    import torch

    from cluster.datasets import lm_loss
    from cluster.engine.estimate import estimate_llc
    from cluster.engine.lean import LeanSGLD
    from cluster.engine.sgld import SGLD
    from cluster.models import load_model

    ref, config, data, load_tokens, make_batches = _setup(args)
    loaded = load_model(ref)
    ds = load_tokens(data, loaded.tokenizer, loaded.max_positions, vocab_size=loaded.model.get_input_embeddings().num_embeddings)
    kept = {}
    cls = LeanSGLD if args.mode == "lean" else SGLD
    step = cls.step

    def measuring_step(self, closure=None):  # the optimizer's state once it exists: what the chain keeps
        out = step(self, closure)
        if not kept:
            params = [p for g in self.param_groups for p in g["params"]]
            kept.update(weights=sum(p.nbytes for p in params), grads=sum(p.grad.nbytes for p in params),
                        anchors=sum(s["anchor"].nbytes for s in self.state.values()),
                        drift=sum(s["delta"].nbytes for s in self.state.values() if "delta" in s))
        return out

    cls.step = measuring_step
    before = _rss_mb()
    start = time.perf_counter()
    estimate_llc(loaded.model, lm_loss, make_batches(ds, args.batch), config,
                 memory="lean" if args.mode == "lean" else "standard")
    seconds = time.perf_counter() - start
    return _report(args.mode, 0, kept, before, seconds / config.total_steps, loaded.provenance["num_parameters"])


def run_rank(args) -> dict:
    import deepspeed
    import torch
    from transformers.integrations import HfDeepSpeedConfig

    from cluster.datasets import lm_loss
    from cluster.engine.zero3 import ShardedChains, zero3_config
    from cluster.models import load_model

    ref, config, data, load_tokens, make_batches = _setup(args)
    deepspeed.init_distributed(dist_backend="gloo")
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    keep = HfDeepSpeedConfig(zero3_config(micro_batch=args.batch // world))
    loaded = load_model(ref)
    del keep
    n_params = sum(p.ds_numel for p in loaded.model.parameters())
    ds = load_tokens(data, loaded.tokenizer, loaded.max_positions, vocab_size=loaded.model.get_input_embeddings().num_embeddings)
    chains = ShardedChains(loaded.model, config, micro_batch=args.batch // world)
    before = _rss_mb()
    start = time.perf_counter()
    chains.run_chain(lm_loss, make_batches(ds, args.batch), config, 0)
    seconds = time.perf_counter() - start
    zero = chains.engine.optimizer
    grads = getattr(zero, "grad_partitions_flat_buffer", None)
    kept = {"weights": sum(w.nbytes for w in zero.fp16_partitioned_groups_flat),
            "grads": grads.nbytes if grads is not None else 0,
            "anchors": sum(s["anchor"].nbytes for s in chains.optimizer.state.values()), "drift": 0}
    return _report(f"zero3 g={world}", rank, kept, before, seconds / config.total_steps, n_params)


def _report(mode: str, rank: int, kept: dict, rss_before: float, s_per_step: float, n_params: int) -> dict:
    import torch

    row = {"mode": mode, "rank": rank, "params": n_params, **{k: v / 2**20 for k, v in kept.items()},
           "kept_mb": sum(kept.values()) / 2**20, "rss_growth_mb": _rss_mb() - rss_before, "s_per_step": s_per_step}
    if torch.cuda.is_available():
        row["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2])
    parser.add_argument("--mode", default="", help=argparse.SUPPRESS)  # set for the child processes
    parser.add_argument("--model", default="", help=argparse.SUPPRESS)
    parser.add_argument("--data", default="", help=argparse.SUPPRESS)
    parser.add_argument("--rows", default="", help=argparse.SUPPRESS)  # where each process writes its row
    args = parser.parse_args()
    if args.mode:
        row = run_rank(args) if args.mode == "zero3" else run_single(args)
        Path(args.rows, f"{row['mode']}-{row['rank']}.json").write_text(json.dumps(row))
        return
    from testbeds.tiny import make_text_dataset, make_tiny_lm

    tmp = Path(tempfile.mkdtemp(prefix="zero3-bench-"))
    model = make_tiny_lm(tmp / "model", "gpt2", hidden=args.hidden, layers=args.layers, heads=4,
                         max_positions=args.context)
    data = make_text_dataset(tmp / "train.jsonl", 400, seed=0)
    rows_dir = tmp / "rows"
    rows_dir.mkdir()
    common = [f"--model={model}", f"--data={data}", f"--rows={rows_dir}", f"--context={args.context}", f"--batch={args.batch}",
              f"--steps={args.steps}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
           "PYTHONPATH": str(ROOT)}
    runs = [[sys.executable, __file__, "--mode=single", *common], [sys.executable, __file__, "--mode=lean", *common]]
    runs += [[sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={g}", __file__,
              "--mode=zero3", *common] for g in args.ranks]
    rows = []
    for cmd in runs:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        found = [json.loads(f.read_text()) for f in rows_dir.glob("*.json")]
        for f in rows_dir.glob("*.json"):
            f.unlink()
        if out.returncode != 0 or not found:
            sys.exit(f"{' '.join(cmd[:4])} failed:\n{out.stderr[-3000:]}")
        rows += sorted(found, key=lambda r: r["rank"])
    print(f"GPT-2 hidden {args.hidden}, {args.layers} layers, {rows[0]['params']:,} parameters; batch {args.batch} x "
          f"{args.context} tokens, {args.steps} full-weight SGLD steps, CPU threads 1 per process")
    print(f"{'mode':<11} {'rank':>4} {'weights MB':>10} {'grads MB':>9} {'w* MB':>7} {'drift MB':>8} {'kept MB':>8} "
          f"{'vs single':>9} {'RSS+ MB':>8} {'s/step':>7}")
    base = rows[0]["kept_mb"]
    for r in rows:
        print(f"{r['mode']:<11} {r['rank']:>4} {r['weights']:>10.2f} {r['grads']:>9.2f} {r['anchors']:>7.2f} "
              f"{r['drift']:>8.2f} {r['kept_mb']:>8.2f} {r['kept_mb'] / base:>9.2f} {r['rss_growth_mb']:>8.1f} "
              f"{r['s_per_step']:>7.3f}")


if __name__ == "__main__":
    main()
