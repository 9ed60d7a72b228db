"""The engine against devinterp 2.0.1 (the anchor) on the same model, data and SGLD settings.

    .venv/bin/python bench/engine_vs_devinterp.py                 # CPU: MLP and GPT-NeoX LMs
    .venv/bin/python bench/engine_vs_devinterp.py --models neox --draws 100
    python bench/engine_vs_devinterp.py --gpu                     # CUDA, Pythia-1.4B shape, bf16 autocast

CPU mode. Two small language models made here: an MLP over token embeddings (a
bigram model, ~0.25M parameters) and a GPT-NeoX-shaped transformer (~0.5M
parameters), both trained briefly on tokens from a random Markov chain so that w*
is near a minimum. Batch 16 × 64 tokens, per-token cross-entropy, the same
SGLD settings (ε, nβ, γ; devinterp's `lr`, `n_beta`, `localization` have the same
meaning: w ← w - ε/2·(nβ·∇L_m + γ(w - w*)) + N(0, ε)), 4 chains × 200 draws, no
burn-in (devinterp averages every step), L(w*) over the whole sampling set
(devinterp: `num_init_loss_batches` = every batch, once per chain).

Each contender runs in its own subprocess (so its peak resident memory, ru_maxrss,
is its own) on the same saved model and token set, and reports:
- whole estimate: wall time of `llc()` / `estimate_llc()` for all chains, L(w*) included;
- per step: SGLD steps/s and tokens/s of one chain's loop alone, from the difference
  of runs of k and 2k steps (start-up, model copies and L(w*) cancel);
- λ̂ ± std over chains.
Ours runs with workers=1 (chains one after another, like devinterp) and workers=2
(two chains at a time, torch's threads split between them). Printed: the ratios,
and whether both λ̂ agree within their errors (|Δ| ≤ 3·√(sem₁² + sem₂²)).

GPU mode (--gpu): Pythia-1.4B shape (24 layers, hidden 2048, random init), batch
8 × 512 tokens, full-weight SGLD, s/step of devinterp's `sample()` (fp32, and with
TF32 matmuls) and of ours (bf16 autocast, fp32 weights and w*). Needs neither Ray
nor DeepSpeed; on a machine without CUDA it exits with a message.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB, SEQ, BATCH, SEQUENCES = 512, 64, 16, 1024
SETTINGS = dict(step_size=1e-4, nbeta=30.0, gamma=100.0)
CONTENDERS = ("devinterp", "ours-w1", "ours-w2")


# --- models and data -------------------------------------------------------------


class TokenMLP(torch.nn.Module):
    """Next-token MLP: each position's logits from its own token's embedding."""

    def __init__(self, vocab: int = VOCAB, embed: int = 64, hidden: int = 256):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, embed)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(embed, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden), torch.nn.GELU(),
            torch.nn.Linear(hidden, vocab),
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(input_ids))


def neox_config(kind: str):
    from transformers import GPTNeoXConfig

    if kind == "pythia-1.4b":
        return GPTNeoXConfig(vocab_size=50304, hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
                             intermediate_size=8192, max_position_embeddings=2048)
    return GPTNeoXConfig(vocab_size=VOCAB, hidden_size=96, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=384, max_position_embeddings=SEQ, tie_word_embeddings=False)


def make_model(name: str) -> torch.nn.Module:
    if name == "mlp":
        return TokenMLP()
    from transformers import GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(neox_config(name))


def logits_of(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    if isinstance(model, TokenMLP):
        return model(input_ids)
    return model(input_ids, use_cache=False).logits


def per_token_loss(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each next token, shape (batch, seq - 1): devinterp's loss_fn contract."""
    logits = logits_of(model, input_ids)[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1),
                                             reduction="none").view(input_ids.shape[0], -1)


def mean_loss(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The engine's loss_fn: the batch mean of the same per-token loss."""
    return per_token_loss(model, input_ids).mean()


# each row's loss (rows of equal length): the engine looks L(w*) up per row (cluster.engine.anchor)
mean_loss.per_row = lambda model, input_ids: per_token_loss(model, input_ids).mean(1)


def markov_tokens(sequences: int, seq: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Token sequences from a random sparse Markov chain: learnable, so w* can be near a minimum."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(vocab, vocab, generator=g) * 3
    probs = torch.softmax(logits, dim=1)
    tokens = torch.empty(sequences, seq, dtype=torch.long)
    tokens[:, 0] = torch.randint(vocab, (sequences,), generator=g)
    for t in range(1, seq):
        tokens[:, t] = torch.multinomial(probs[tokens[:, t - 1]], 1, generator=g).squeeze(1)
    return tokens


def train_briefly(model: torch.nn.Module, tokens: torch.Tensor, steps: int, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(len(tokens), (BATCH * 2,), generator=g)
        loss = mean_loss(model, tokens[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


class TokenBatches:
    """Re-iterable batches of input_ids, reshuffled every pass by torch's global RNG
    (which the engine seeds per chain); drops the last partial batch like devinterp."""

    def __init__(self, tokens: torch.Tensor, batch: int):
        self.tokens, self.batch = tokens, batch

    def __len__(self) -> int:
        return len(self.tokens) // self.batch

    def every_row(self) -> list[torch.Tensor]:
        """Every sequence once (the last batch may be partial): the engine's L(w*) table pass."""
        return [self.tokens[i:i + self.batch] for i in range(0, len(self.tokens), self.batch)]

    def __iter__(self):
        order = torch.randperm(len(self.tokens))
        for i in range(len(self)):
            yield self.tokens[order[i * self.batch:(i + 1) * self.batch]]


# --- contenders (each in its own process) ----------------------------------------


def run_ours(model, tokens, *, chains: int, draws: int, workers: int, mala: bool, dtype: str = "float32") -> dict:
    from cluster.contract.sampler import SamplerConfig
    from cluster.engine.estimate import estimate_llc

    config = SamplerConfig(**SETTINGS, chains=chains, draws=draws, burn_in=0, seed=0, init_loss="full", mala=mala,
                           dtype=dtype, fetch_every=max(1, min(100, draws)))
    start = time.perf_counter()
    result = estimate_llc(model, mean_loss, TokenBatches(tokens, BATCH), config, workers=workers)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "llc_mean": result.llc_mean, "llc_std": result.llc_std,
            "llc_per_chain": result.llc_per_chain, "warnings": result.warnings}


def run_devinterp(model, tokens, *, chains: int, draws: int, init_batches: int) -> dict:
    from datasets import Dataset
    from devinterp.slt.llc import llc

    dataset = Dataset.from_dict({"input_ids": tokens.tolist()}).with_format("torch")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        out = llc(model, dataset, {}, lr=SETTINGS["step_size"], n_beta=SETTINGS["nbeta"],
                  localization=SETTINGS["gamma"], loss_fn=per_token_loss, num_chains=chains, num_draws=draws,
                  num_burnin_steps=0, batch_size=BATCH, num_init_loss_batches=init_batches, init_seed=0,
                  device="cpu", output_path=Path(tmp) / "samples.zarr")
        per_chain = [float(v) for v in out["llc_per_chain"].values]
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "llc_mean": float(out["llc_mean"]), "llc_std": float(torch.tensor(per_chain).std()),
            "llc_per_chain": per_chain, "warnings": []}


def contender_main(args) -> None:
    """Child process: load the saved model and tokens, run one contender, print JSON."""
    saved = torch.load(Path(args.workdir) / f"{args.model}.pt", weights_only=False)
    model = make_model(args.model)
    model.load_state_dict(saved["state"])
    tokens = saved["tokens"]
    k = args.step_draws

    def loop_seconds(run) -> float | None:
        """Seconds per step of one chain's loop: (T(2k steps) - T(k steps))/k, so start-up,
        model copies and L(w*) cancel."""
        if not k:
            return None
        step = (run(2 * k)["seconds"] - run(k)["seconds"]) / k
        return step if step > 0 else None  # timing noise (a loaded machine) swamped the difference

    if args.contender == "devinterp":
        whole = run_devinterp(model, tokens, chains=args.chains, draws=args.draws, init_batches=len(tokens) // BATCH)
        step_s = loop_seconds(lambda n: run_devinterp(model, tokens, chains=1, draws=n, init_batches=1))
    else:
        workers = int(args.contender.removeprefix("ours-w"))
        whole = run_ours(model, tokens, chains=args.chains, draws=args.draws, workers=workers, mala=args.mala)
        # one chain's loop does not depend on workers: measured once, by ours-w1
        step_s = loop_seconds(lambda n: run_ours(model, tokens, chains=1, draws=n, workers=1, mala=args.mala)
                              ) if workers == 1 else None
    out = {
        "contender": args.contender,
        "model": args.model,
        "params": sum(p.numel() for p in model.parameters()),
        "whole_s": whole["seconds"],
        "throughput_steps_per_s": args.chains * args.draws / whole["seconds"],
        "chain_steps_per_s": 1 / step_s if step_s else None,
        "chain_tokens_per_s": BATCH * SEQ / step_s if step_s else None,
        "llc_mean": whole["llc_mean"],
        "llc_std": whole["llc_std"],
        "llc_per_chain": whole["llc_per_chain"],
        "warnings": whole["warnings"],
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print("RESULT " + json.dumps(out), flush=True)


# --- the comparison ---------------------------------------------------------------


def prepare(workdir: Path, models: list[str], train_steps: int) -> None:
    tokens = markov_tokens(SEQUENCES, SEQ, VOCAB)
    for name in models:
        torch.manual_seed(0)
        model = make_model(name)
        loss = train_briefly(model, tokens, train_steps)
        torch.save({"state": model.state_dict(), "tokens": tokens}, workdir / f"{name}.pt")
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params:,} parameters, trained {train_steps} Adam steps to loss {loss:.3f}", flush=True)


def run_contender(workdir: Path, model: str, contender: str, args) -> dict:
    cmd = [sys.executable, __file__, "--contender", contender, "--model", model, "--workdir", str(workdir),
           "--draws", str(args.draws), "--chains", str(args.chains), "--step-draws", str(args.step_draws)] + (["--mala"] if args.mala else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{contender} on {model} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def agree(a: dict, b: dict, chains: int) -> bool:
    sem = math.sqrt((a["llc_std"] ** 2 + b["llc_std"] ** 2) / chains)
    return abs(a["llc_mean"] - b["llc_mean"]) <= 3 * sem


def cpu_main(args) -> int:
    models = args.models
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        prepare(workdir, models, args.train_steps)
        print(f"SGLD: ε = {SETTINGS['step_size']}, nβ = {SETTINGS['nbeta']}, γ = {SETTINGS['gamma']}, "
              f"{args.chains} chains × {args.draws} draws, batch {BATCH} × {SEQ} tokens, torch threads "
              f"{torch.get_num_threads()}, MALA {'on' if args.mala else 'off'}", flush=True)
        print(f"{'model':<6}{'contender':<11}{'whole (s)':>10}{'steps/s':>9}{'chain steps/s':>14}{'tokens/s':>10}"
              f"{'peak RSS':>10}{'λ̂ ± std':>18}", flush=True)
        failed = False
        for model in models:
            rows = {}
            for contender in CONTENDERS:
                r = run_contender(workdir, model, contender, args)
                rows[contender] = r
                chain = f"{r['chain_steps_per_s']:>14.2f}{r['chain_tokens_per_s']:>10.0f}" if r["chain_steps_per_s"] else f"{'-':>14}{'-':>10}"
                print(f"{model:<6}{contender:<11}{r['whole_s']:>10.1f}{r['throughput_steps_per_s']:>9.2f}{chain}"
                      f"{r['maxrss_mb']:>8.0f}MB{r['llc_mean']:>10.2f} ± {r['llc_std']:<6.2f}", flush=True)
                for w in r["warnings"]:
                    print(f"      warning: {w}")
            base = rows["devinterp"]
            for contender in CONTENDERS[1:]:
                r = rows[contender]
                ok = agree(base, r, args.chains)
                failed |= not ok
                per_step = (f"one chain {r['chain_steps_per_s'] / base['chain_steps_per_s']:.2f}× the steps/s, "
                            if r["chain_steps_per_s"] and base["chain_steps_per_s"] else "")
                print(f"{model:<6}{contender} vs devinterp: whole estimate {base['whole_s'] / r['whole_s']:.2f}× sooner, "
                      f"{per_step}peak memory "
                      f"{r['maxrss_mb'] / base['maxrss_mb']:.2f}×, λ̂ {'agree' if ok else 'DISAGREE'} "
                      f"({r['llc_mean']:.2f} vs {base['llc_mean']:.2f})", flush=True)
    return 1 if failed else 0


# --- GPU mode ----------------------------------------------------------------------


def gpu_main(args) -> int:
    if not torch.cuda.is_available():
        print("--gpu needs a CUDA device and this machine has none (torch.cuda.is_available() is False); "
              "run the CPU comparison without --gpu, or run this on a GPU machine.", file=sys.stderr)
        return 2
    from transformers import GPTNeoXForCausalLM

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(neox_config("pythia-1.4b")).to(device)
    params = sum(p.numel() for p in model.parameters())
    tokens = torch.randint(50304, (args.gpu_batch * 4, args.gpu_seq))
    print(f"Pythia-1.4B shape: {params / 1e9:.2f}B parameters, batch {args.gpu_batch} × {args.gpu_seq} tokens, "
          f"{torch.cuda.get_device_name()}", flush=True)
    steps = args.gpu_steps

    def run_ours(n: int) -> float:
        from cluster.contract.sampler import SamplerConfig

        # L(w*) from one batch: this times the step loop, not the estimate's precision
        from cluster.engine.estimate import estimate_llc
        config = SamplerConfig(**SETTINGS, chains=1, draws=n, init_loss="full", init_loss_batches=1, mala=False,
                               dtype="bfloat16", fetch_every=n)
        torch.cuda.synchronize()
        start = time.perf_counter()
        estimate_llc(model, mean_loss, TokenBatches(tokens, args.gpu_batch), config)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    def run_devinterp(n: int, tf32: bool) -> float:
        from datasets import Dataset
        from devinterp.slt.llc import llc

        torch.backends.cuda.matmul.allow_tf32 = tf32
        dataset = Dataset.from_dict({"input_ids": tokens.tolist()}).with_format("torch")
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.cuda.synchronize()
            start = time.perf_counter()
            llc(model, dataset, {}, lr=SETTINGS["step_size"], n_beta=SETTINGS["nbeta"], localization=SETTINGS["gamma"],
                loss_fn=per_token_loss, num_chains=1, num_draws=n, num_burnin_steps=0, batch_size=args.gpu_batch,
                num_init_loss_batches=1, init_seed=0, device="cuda", output_path=Path(tmp) / "samples.zarr")
            torch.cuda.synchronize()
        torch.backends.cuda.matmul.allow_tf32 = False
        return time.perf_counter() - start

    def per_step(run) -> float:
        """(T(warmup + steps) - T(warmup)) / steps: start-up, copies and L(w*) cancel."""
        short = run(args.gpu_warmup)
        return (run(args.gpu_warmup + steps) - short) / steps

    rows = {}
    torch.cuda.reset_peak_memory_stats()
    rows["ours (bf16 autocast)"] = (per_step(run_ours), torch.cuda.max_memory_allocated() / 2**30)
    for tf32 in (False, True):
        torch.cuda.reset_peak_memory_stats()
        rows[f"devinterp ({'TF32' if tf32 else 'fp32'})"] = (per_step(lambda n: run_devinterp(n, tf32)),
                                                             torch.cuda.max_memory_allocated() / 2**30)
    for name, (sec, mem) in rows.items():
        tokens_s = args.gpu_batch * args.gpu_seq / sec
        print(f"{name:<24}{sec:>8.3f} s/step{tokens_s:>10.0f} tokens/s  peak {mem:.1f} GiB", flush=True)
    ours = rows["ours (bf16 autocast)"][0]
    for name in ("devinterp (fp32)", "devinterp (TF32)"):
        print(f"ours vs {name}: {rows[name][0] / ours:.2f}× faster per step")
    print(f"target ≤ 0.13 s/step: {'met' if ours <= 0.13 else 'NOT met'} ({ours:.3f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "neox"], choices=["mlp", "neox"])
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--step-draws", type=int, default=25,
                        help="k: one chain's steps/s from runs of k and 2k steps (0: skip)")
    parser.add_argument("--train-steps", type=int, default=300, help="Adam steps that make w* (a near-minimum)")
    parser.add_argument("--mala", action="store_true", help="ours also estimates MALA acceptance (devinterp does not)")
    parser.add_argument("--gpu", action="store_true", help="CUDA, Pythia-1.4B shape, bf16 autocast")
    parser.add_argument("--gpu-batch", type=int, default=8)
    parser.add_argument("--gpu-seq", type=int, default=512)
    parser.add_argument("--gpu-steps", type=int, default=20, help="timed steps (after --gpu-warmup)")
    parser.add_argument("--gpu-warmup", type=int, default=3)
    # internal: one contender in a child process
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.contender:
        contender_main(args)
        return 0
    return gpu_main(args) if args.gpu else cpu_main(args)


if __name__ == "__main__":
    sys.exit(main())
