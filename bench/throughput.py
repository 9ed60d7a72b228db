"""Step throughput of the engine against devinterp 2.0.1, one chain and many chains per device.

    .venv/bin/python bench/throughput.py                  # CPU: MLP and GPT-NeoX of bench/engine_vs_devinterp.py
    .venv/bin/python bench/throughput.py --quick          # reduced sizes (a smoke test; bench/gpu_run.sh --cpu)
    python bench/throughput.py --gpu                      # CUDA: Pythia shapes, batched Pythia-14M chains

Every figure is a per-step time from the difference of runs of k and 2k steps (start-up,
L(w*) and model copies cancel), repeated `--reps` times with the contenders alternating,
and the median taken. Printed and written as JSON under bench/results/:

- one chain's s/step and steps/s, ours ("foreach" update; "fused"/"compiled" where asked)
  and devinterp's `llc()` on the same model, batch and SGLD settings (ε, nβ, γ as in
  engine_vs_devinterp.py, MALA off, L(w*) "full"); ours also with MALA on (its cost);
- aggregate chain-steps/s of C chains run as one batched computation
  (estimate_llc(batch_chains=C)) for C in --chains-list, against devinterp running the
  same chains one after another (its one-chain steps/s);
- the whole estimate (4 chains × --draws, L(w*) included): ours batched against devinterp;
- GPU mode: s/step, tokens/s, MFU (6·N FLOPs per token over the bf16 dense peak) and peak
  memory per contender; devinterp only where it is installed (the GPU machine may lack it).

Ours pairs every draw with L_m(w*) on the draw's own batch (the paired signal of λ̂ and the
diagnostics), which devinterp does not compute. "ours" looks it up in the table of L(w*) per
row (cluster.engine.anchor; its one pass over the set is start-up, built in the first run and
kept, as a worker keeps it between calls, and counted in the whole estimate); "ours-forward" evaluates it by a no-grad
forward at w* per draw, as before the table. CPU mode also times the step's parts on their own
("components": forward and backward, the forward at w*, the table lookup, the SGLD update,
its noise): devinterp's s/step over forward+backward is what any loop could reach.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TQDM_DISABLE", "1")

import engine_vs_devinterp as evd  # noqa: E402  (models, data and settings shared with that bench)

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def have_devinterp() -> bool:
    try:
        import devinterp.slt.llc  # noqa: F401
    except Exception:
        return False
    return True


def fmt(value, spec: str = ".2f") -> str:
    """A figure, or "n/a" where timing noise swamped a k/2k difference."""
    return format(value, spec) if isinstance(value, (int, float)) else "n/a"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# CPU mode times CPU seconds of this process (all its threads): on a machine shared with
# other work, wall time measures the neighbours; --clock wall restores it. GPU mode: wall.
CLOCK = {"fn": time.perf_counter}


def now() -> float:
    return CLOCK["fn"]()


# --- contenders: seconds for a run of n steps ---------------------------------------


# The L(w*) tables of "ours", built in the first run and kept, as a worker keeps one per dataset
# between calls: the pass is start-up, not a per-step cost (it is counted in the whole estimate).
TABLES: dict[tuple, object] = {}


def ours_seconds(model, tokens, n: int, *, batch: int, chains: int = 1, mala: bool = False, update: str = "foreach",
                 dtype: str = "float32", device: str = "cpu", anchor: str = "table") -> float:
    from cluster.contract.sampler import SamplerConfig
    from cluster.engine.anchor import AnchorCache
    from cluster.engine.estimate import estimate_llc

    config = SamplerConfig(**evd.SETTINGS, chains=chains, draws=n, burn_in=0, seed=0, init_loss="full",
                           init_loss_batches=1, mala=mala, dtype=dtype, fetch_every=max(1, min(100, n)))
    sync(device)
    start = now()
    estimate_llc(model, evd.mean_loss, evd.TokenBatches(tokens, batch), config, init_loss=1.0,
                 batch_chains=chains, update=update, anchor=anchor,
                 anchor_cache=TABLES.setdefault((id(model), id(tokens), batch), AnchorCache()))
    sync(device)
    return now() - start


def devinterp_seconds(model, tokens, n: int, *, batch: int, chains: int = 1, device: str = "cpu",
                      init_batches: int = 1) -> float:
    from datasets import Dataset
    from devinterp.slt.llc import llc

    dataset = Dataset.from_dict({"input_ids": tokens.tolist()}).with_format("torch")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sync(device)
        start = now()
        llc(model, dataset, {}, lr=evd.SETTINGS["step_size"], n_beta=evd.SETTINGS["nbeta"],
            localization=evd.SETTINGS["gamma"], loss_fn=evd.per_token_loss, num_chains=chains, num_draws=n,
            num_burnin_steps=0, batch_size=batch, num_init_loss_batches=init_batches, init_seed=0, device=device,
            output_path=Path(tmp) / "samples.zarr")
        sync(device)
    return now() - start


def components(model, tokens, *, batch: int, n: int, reps: int) -> dict[str, float]:
    """Median seconds of the parts of one step, timed on their own (contenders alternating):
    forward+backward of the loss, the no-grad forward at w* and the table lookup (the two ways
    to the paired L_m(w*)), the SGLD update ("foreach", noise included) and the noise draw alone."""
    from cluster.engine import estimate
    from cluster.engine.anchor import AnchorTable
    from cluster.engine.sgld import SGLD

    params = [p for p in model.parameters() if p.requires_grad]
    opt = SGLD(params, lr=evd.SETTINGS["step_size"], nbeta=evd.SETTINGS["nbeta"], gamma=evd.SETTINGS["gamma"],
               generator=torch.Generator().manual_seed(0))
    batches = [tokens[i * batch:(i + 1) * batch] for i in range(len(tokens) // batch)]

    def forward_backward(i):
        for p in params:  # as in the loop (zero_grad(set_to_none=True)): no accumulation into old gradients
            p.grad = None
        evd.mean_loss(model, batches[i % len(batches)]).backward()

    def paired(i):
        estimate._loss_at_anchor(model, evd.mean_loss, batches[i % len(batches)], opt, torch.device("cpu"), "float32",
                                 pointers=pointers)

    table = AnchorTable.build(model, evd.mean_loss, batches)
    misses = torch.zeros((), dtype=torch.int64)

    def lookup(i):
        table.batch_loss(batches[i % len(batches)], misses)

    def update(i):
        opt.step()

    def noise(i):
        opt._noise(params)

    start = [p.detach().clone() for p in params]
    pointers = estimate._own_storages(model, params)
    forward_backward(0)
    update(0)  # w* captured, w one step away from it
    parts = {"forward_backward": forward_backward, "paired_forward": paired, "table_lookup": lookup,
             "update": update, "noise": noise}
    samples: dict[str, list[float]] = {k: [] for k in parts}
    try:
        for _ in range(reps):
            for name, fn in parts.items():
                fn(0)
                t = now()
                for i in range(n):
                    fn(i)
                samples[name].append((now() - t) / n)
    finally:
        with torch.no_grad():
            for p, w in zip(params, start):
                p.copy_(w)
                p.grad = None
    return {k: statistics.median(v) for k, v in samples.items()}


def per_step(contenders: dict, k: int, reps: int, log) -> dict[str, dict]:
    """Median over `reps` of (T(2k) - T(k))/k per contender, the contenders alternating."""
    for run in contenders.values():  # warm-up (imports, first allocations, compilation)
        run(max(2, k // 4))
    samples = {name: [] for name in contenders}
    for rep in range(reps):
        for name, run in contenders.items():
            short = run(k)
            samples[name].append((run(2 * k) - short) / k)
        log(f"  rep {rep + 1}/{reps}: " + ", ".join(f"{n} {1000 * v[-1]:.2f} ms" for n, v in samples.items()))
    out = {}
    for name, values in samples.items():
        med = statistics.median(values)
        out[name] = {"s_per_step": med, "steps_per_s": 1 / med if med > 0 else None, "samples": values}
    return out


# --- CPU ------------------------------------------------------------------------------


def cpu_main(args) -> dict:
    log = lambda s: print(s, flush=True)  # noqa: E731
    torch.set_num_threads(args.threads)
    tokens = evd.markov_tokens(args.sequences, evd.SEQ, evd.VOCAB)
    if args.clock == "cpu":
        CLOCK["fn"] = time.process_time
    report = {"mode": "cpu", "threads": args.threads, "k": args.k, "reps": args.reps, "clock": args.clock,
              "models": {}}
    devinterp = have_devinterp() and not args.no_devinterp
    if not devinterp:
        log("devinterp is not installed: only our figures (pip install -r requirements-bench.txt)")
    for name in args.models:
        torch.manual_seed(0)
        model = evd.make_model(name)
        evd.train_briefly(model, tokens, args.train_steps)
        params = sum(p.numel() for p in model.parameters())
        k = args.k if name == "mlp" else max(2, args.k // 3)
        log(f"{name}: {params:,} parameters, batch {evd.BATCH} × {evd.SEQ}, k = {k}, {args.reps} reps, "
            f"{args.threads} thread(s), {args.clock} clock")
        row: dict = {"params": params, "k": k}
        contenders = {"ours": lambda n: ours_seconds(model, tokens, n, batch=evd.BATCH),
                      "ours-mala": lambda n: ours_seconds(model, tokens, n, batch=evd.BATCH, mala=True)}
        if not args.no_forward:
            contenders["ours-forward"] = lambda n: ours_seconds(model, tokens, n, batch=evd.BATCH, anchor="forward")
        for update in args.updates:
            contenders[f"ours-{update}"] = (lambda u: lambda n: ours_seconds(model, tokens, n, batch=evd.BATCH,
                                                                             update=u))(update)
        if devinterp:
            contenders["devinterp"] = lambda n: devinterp_seconds(model, tokens, n, batch=evd.BATCH)
        one = per_step(contenders, k, args.reps, log)
        row["one_chain"] = one
        if devinterp:
            row["one_chain_ratio"] = one["devinterp"]["s_per_step"] / one["ours"]["s_per_step"]
            log(f"{name}: one chain {fmt(one['ours']['steps_per_s'])} steps/s vs devinterp "
                f"{fmt(one['devinterp']['steps_per_s'])}: {row['one_chain_ratio']:.2f}×; MALA costs "
                f"{one['ours-mala']['s_per_step'] / one['ours']['s_per_step'] - 1:+.0%} per step")
            if "ours-forward" in one:
                row["forward_ratio"] = one["devinterp"]["s_per_step"] / one["ours-forward"]["s_per_step"]
                log(f"{name}: with a forward at w* per draw instead of the table {row['forward_ratio']:.2f}× devinterp")
        # the step's parts on their own: what the paired ratio can reach at best
        parts = components(model, tokens, batch=evd.BATCH, n=max(4, k // 2), reps=args.reps)
        row["components"] = parts
        log(f"{name}: parts of one step (ms): forward+backward {1000 * parts['forward_backward']:.2f}, no-grad forward "
            f"at w* {1000 * parts['paired_forward']:.2f}, table lookup {1000 * parts['table_lookup']:.3f}, SGLD update "
            f"{1000 * parts['update']:.2f} (noise {1000 * parts['noise']:.2f})")
        if devinterp:
            floor = parts["forward_backward"] + parts["table_lookup"]
            row["paired_ratio_bound"] = one["devinterp"]["s_per_step"] / floor
            log(f"{name}: ours can reach at most {row['paired_ratio_bound']:.2f}× devinterp (its s/step over "
                f"forward+backward + lookup: a free update and loop)")
        # many chains as one batched computation
        batched = {}
        for chains in args.chains_list:
            kc = max(2, k // max(1, chains // 4))
            res = per_step({"b": lambda n, c=chains: ours_seconds(model, tokens, n, batch=evd.BATCH, chains=c)},
                           kc, max(1, args.reps // 2), lambda s: None)["b"]
            batched[chains] = {"s_per_step": res["s_per_step"], "chain_steps_per_s": chains / res["s_per_step"]}
            if devinterp and one["devinterp"]["steps_per_s"]:
                batched[chains]["vs_devinterp"] = batched[chains]["chain_steps_per_s"] / one["devinterp"]["steps_per_s"]
            log(f"{name}: {chains:>3} batched chains: {fmt(batched[chains]['chain_steps_per_s'])} chain-steps/s"
                + (f" ({batched[chains]['vs_devinterp']:.2f}× devinterp one after another)"
                   if "vs_devinterp" in batched[chains] else ""))
        row["batched"] = batched
        # the whole estimate: 4 chains × draws, L(w*) over the whole set, ours batched
        if args.draws:
            from cluster.contract.sampler import SamplerConfig
            from cluster.engine.estimate import estimate_llc

            config = SamplerConfig(**evd.SETTINGS, chains=4, draws=args.draws, burn_in=0, seed=0, init_loss="full",
                                   mala=False, fetch_every=max(1, min(100, args.draws)))
            start = now()
            result = estimate_llc(model, evd.mean_loss, evd.TokenBatches(tokens, evd.BATCH), config, batch_chains=4)
            ours_whole = now() - start
            row["whole"] = {"ours_s": ours_whole, "ours_llc": result.llc_mean}
            if devinterp:
                start = now()
                devinterp_seconds(model, tokens, args.draws, batch=evd.BATCH, chains=4,
                                  init_batches=len(tokens) // evd.BATCH)
                row["whole"]["devinterp_s"] = now() - start
                row["whole"]["ratio"] = row["whole"]["devinterp_s"] / ours_whole
                log(f"{name}: whole estimate (4 chains × {args.draws}) ours {ours_whole:.1f} s, devinterp "
                    f"{row['whole']['devinterp_s']:.1f} s: {row['whole']['ratio']:.2f}× sooner")
        report["models"][name] = row
    return report


# --- GPU ------------------------------------------------------------------------------


def peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def gpu_model(shape: str, attn: str):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    dims = {"pythia-14m": (6, 128, 4, 512), "pythia-70m": (6, 512, 8, 2048), "pythia-410m": (24, 1024, 16, 4096),
            "pythia-1.4b": (24, 2048, 16, 8192), "pythia-2.8b": (32, 2560, 32, 10240)}[shape]
    layers, hidden, heads, inter = dims
    config = GPTNeoXConfig(vocab_size=50304, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=inter, max_position_embeddings=2048, attn_implementation=attn)
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(config).cuda()


def gpu_main(args) -> dict:
    if not torch.cuda.is_available():
        print("--gpu needs a CUDA device and this machine has none", file=sys.stderr)
        raise SystemExit(2)
    log = lambda s: print(s, flush=True)  # noqa: E731
    peak = peak_tflops(args)
    devinterp = have_devinterp() and not args.no_devinterp
    report = {"mode": "gpu", "device": torch.cuda.get_device_name(), "peak_bf16_tflops": peak, "shapes": {},
              "batched": {}}
    log(f"{report['device']}, bf16 dense peak {peak} TFLOP/s; devinterp {'present' if devinterp else 'absent'}")
    for shape in args.shapes:
        model = gpu_model(shape, args.attn)
        n = sum(p.numel() for p in model.parameters())
        tokens = torch.randint(50304, (args.gpu_batch * 8, args.gpu_seq))
        contenders = {f"ours-{u}": (lambda u: lambda s: ours_seconds(model, tokens, s, batch=args.gpu_batch,
                                                                      update=u, dtype="bfloat16", device="cuda"))(u)
                      for u in ["foreach", *args.updates]}
        if devinterp:
            def di(s, tf32):
                torch.backends.cuda.matmul.allow_tf32 = tf32
                try:
                    return devinterp_seconds(model, tokens, s, batch=args.gpu_batch, device="cuda")
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = False
            contenders["devinterp-fp32"] = lambda s: di(s, False)
            contenders["devinterp-tf32"] = lambda s: di(s, True)
        rows = {}
        for name, run in contenders.items():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            try:
                res = per_step({name: run}, args.gpu_steps, args.reps, log)[name]
            except torch.OutOfMemoryError as exc:
                rows[name] = {"error": f"out of memory: {exc}"[:300]}
                log(f"{shape} {name}: out of memory")
                continue
            tok = args.gpu_batch * args.gpu_seq / res["s_per_step"]
            rows[name] = {"s_per_step": res["s_per_step"], "tokens_per_s": tok,
                          "mfu": 6 * n * tok / (peak * 1e12) if peak else None,
                          "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
            r = rows[name]
            log(f"{shape} {name:<16}{fmt(r['s_per_step'], '>8.3f')} s/step{tok:>10.0f} tokens/s  MFU "
                f"{(r['mfu'] or 0):.1%}  peak {r['peak_gib']:.1f} GiB")
        report["shapes"][shape] = {"params": n, "rows": rows}
        del model
        torch.cuda.empty_cache()
    # many chains of a small model on one GPU
    model = gpu_model(args.batched_shape, args.attn)
    tokens = torch.randint(50304, (args.chain_batch * 8, args.chain_seq))
    base = None
    if devinterp:
        base = per_step({"d": lambda s: devinterp_seconds(model, tokens, s, batch=args.chain_batch, device="cuda")},
                        args.gpu_steps, args.reps, log)["d"]["s_per_step"]
    for chains in args.chains_list:
        try:
            res = per_step({"b": lambda s, c=chains: ours_seconds(model, tokens, s, batch=args.chain_batch, chains=c,
                                                                  dtype="bfloat16", device="cuda")},
                           args.gpu_steps, args.reps, log)["b"]
        except torch.OutOfMemoryError:
            report["batched"][chains] = {"error": "out of memory"}
            log(f"{args.batched_shape} {chains} chains: out of memory")
            break
        row = {"s_per_step": res["s_per_step"], "chain_steps_per_s": chains / res["s_per_step"]}
        if base and base > 0:
            row["vs_devinterp"] = row["chain_steps_per_s"] * base
        report["batched"][chains] = row
        log(f"{args.batched_shape} {chains:>3} batched chains: {row['chain_steps_per_s']:.1f} chain-steps/s"
            + (f" ({row['vs_devinterp']:.1f}× devinterp one after another)" if base else ""))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--quick", action="store_true", help="reduced sizes: a smoke test of every path")
    parser.add_argument("--models", nargs="+", default=["mlp", "neox"], choices=["mlp", "neox"])
    parser.add_argument("--k", type=int, default=60, help="k of the k / 2k step runs (NeoX: k/3)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--sequences", type=int, default=evd.SEQUENCES)
    parser.add_argument("--draws", type=int, default=200, help="whole-estimate draws per chain (0: skip)")
    parser.add_argument("--chains-list", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--updates", nargs="*", default=[], choices=["fused", "compiled"],
                        help="also time these SGLD updates (GPU: 'compiled' is the fused kernel)")
    parser.add_argument("--no-devinterp", action="store_true")
    parser.add_argument("--no-forward", action="store_true", help="skip ours-forward (L_m(w*) by a forward per draw)")
    parser.add_argument("--no-unpaired", "--unpaired", action="store_true", help=argparse.SUPPRESS)  # old scripts
    parser.add_argument("--clock", default="cpu", choices=["cpu", "wall"],
                        help="CPU mode: process CPU seconds (robust on a shared machine) or wall seconds")
    parser.add_argument("--shapes", nargs="+", default=["pythia-410m", "pythia-1.4b", "pythia-2.8b"])
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--gpu-batch", type=int, default=8)
    parser.add_argument("--gpu-seq", type=int, default=512)
    parser.add_argument("--gpu-steps", type=int, default=10)
    parser.add_argument("--batched-shape", default="pythia-14m")
    parser.add_argument("--chain-batch", type=int, default=8)
    parser.add_argument("--chain-seq", type=int, default=256)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.k, args.reps, args.train_steps, args.draws = 4, 1, 5, 8
        args.chains_list, args.sequences = [1, 2], 128
        args.shapes, args.gpu_steps = ["pythia-14m"], 3
    report = gpu_main(args) if args.gpu else cpu_main(args)
    report.update(torch=torch.__version__, python=platform.python_version(), host=platform.node(),
                  time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), argv=sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"throughput-{report['mode']}{'-quick' if args.quick else ''}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
