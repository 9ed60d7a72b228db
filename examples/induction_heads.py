"""Per-head LLCs of a small attention-only transformer that learns induction heads.

    .venv/bin/python examples/induction_heads.py --out induction_heads_out

1. Trains a 2-layer, 4-head attention-only transformer on CPU on sequences made of
   a random token string repeated twice ([s, s], |s| = 16): the second half is
   predictable only by in-context copying, which needs an induction circuit (a
   previous-token head in layer 0 feeding an induction head in layer 1).
   The model is a Hugging Face GPT-NeoX (rotary positions, layer norms) whose MLPs
   are made to vanish: intermediate size 1, output weights and bias zero and never
   trained, so each block adds exactly its attention output (use_parallel_residual).
2. Saves checkpoints before, during and after the induction bump (save_pretrained),
   and the evaluation sequences as a pre-tokenized jsonl dataset.
3. For every checkpoint, loads it the way a job does (cluster.models.load_model,
   cluster.datasets.load_token_dataset) and estimates one weight-restricted LLC per
   attention head (cluster.restrictions head selectors, cluster.engine.estimate_llc),
   plus attention scores saying which heads attend to the previous token and which
   do induction.
4. Prints a table and writes llc_heads.png (heatmap per checkpoint) and results.json.

With --service (docs/trajectories.md) step 3 is one LLC trajectory job instead: a local Ray
cluster and the llc.v1 server (SQLite) start, the SDK submits every checkpoint and every
head restriction over gRPC, and the result's per-head λ̂(t) curves, stage boundaries and the
induction score per checkpoint are written to trajectory.png and trajectory.json:

    .venv/bin/python examples/induction_heads.py --out induction_heads_out --service \
        --checkpoints 0 20 40 60 80 100 150 200 300 400 600
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cluster.datasets import lm_loss, load_token_dataset, make_batches  # noqa: E402
from cluster.contract.sampler import SamplerConfig  # noqa: E402
from cluster.engine.estimate import compute_init_loss, estimate_llc
from cluster.models import load_model  # noqa: E402
from cluster.restrictions import preview, select_weights  # noqa: E402
from cluster.contract.spec import DatasetRef, ModelRef, Restriction, WeightSelector  # noqa: E402
from testbeds.tiny import make_tiny_tokenizer, make_token_dataset  # noqa: E402

LAYERS, HEADS, HIDDEN = 2, 4, 64
FIRST_TOKEN = 3  # ids 0-2 are the tokenizer's special tokens


def repeated_sequences(n: int, half: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    s = torch.randint(FIRST_TOKEN, vocab, (n, half), generator=generator)
    return torch.cat([s, s], dim=1)


def make_model(vocab: int, context: int):
    import transformers as tf

    config = tf.GPTNeoXConfig(
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, hidden_size=HIDDEN, intermediate_size=1,
        max_position_embeddings=context, vocab_size=vocab, tie_word_embeddings=False, use_parallel_residual=True,
        attention_dropout=0.0, hidden_dropout=0.0, bos_token_id=1, eos_token_id=1, pad_token_id=2)
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    for layer in model.gpt_neox.layers:  # attention-only: the MLP adds exactly zero
        torch.nn.init.zeros_(layer.mlp.dense_4h_to_h.weight)
        torch.nn.init.zeros_(layer.mlp.dense_4h_to_h.bias)
        layer.mlp.requires_grad_(False)
    return model


def half_losses(model, x: torch.Tensor, half: int) -> tuple[float, float]:
    """Mean next-token loss on the first half (unpredictable) and second half (copyable)."""
    with torch.no_grad():
        logits = model(input_ids=x).logits[:, :-1]
        per = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
    return float(per[:, :half - 1].mean()), float(per[:, half:].mean())


def attention_scores(model, x: torch.Tensor, half: int) -> dict[str, list[list[float]]]:
    """Per (layer, head): mean attention to the previous token, and from the second half
    to the token after the earlier occurrence of the current token (induction)."""
    with torch.no_grad():
        attn = model(input_ids=x, output_attentions=True).attentions  # per layer [B, H, T, T]
    T = x.shape[1]
    pos = torch.arange(1, T)
    ind = torch.arange(half, T)
    prev, induction = [], []
    for a in attn:
        prev.append(a[:, :, pos, pos - 1].mean(dim=(0, 2)).tolist())
        induction.append(a[:, :, ind, ind - half + 1].mean(dim=(0, 2)).tolist())
    return {"previous_token": prev, "induction": induction}


def train(out: Path, steps: int, checkpoints: list[int], half: int, batch: int, seed: int) -> list[dict]:
    vocab = len(make_tiny_tokenizer(out / "tokenizer"))
    torch.manual_seed(seed)
    model = make_model(vocab, 2 * half)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    probe = repeated_sequences(256, half, vocab, torch.Generator().manual_seed(seed + 1))
    saved = []
    t0 = time.time()
    for step in range(steps + 1):
        if step in checkpoints:
            model.eval()
            first, second = half_losses(model, probe, half)
            scores = attention_scores(model, probe, half)
            path = out / f"checkpoint-{step}"
            model.save_pretrained(str(path))
            make_tiny_tokenizer(path)
            saved.append({"step": step, "path": str(path), "loss_first_half": first, "loss_second_half": second,
                          **scores})
            print(f"  step {step:5d}  loss first half {first:.3f}  second half {second:.3f}  "
                  f"({time.time() - t0:.0f}s)", flush=True)
            model.train()
        if step == steps:
            break
        x = repeated_sequences(batch, half, vocab, gen)
        loss = lm_loss(model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return saved


def head_llcs(ckpt: dict, data: Path, half: int, config: SamplerConfig, batch: int) -> dict:
    loaded = load_model(ModelRef(local_path=ckpt["path"]))
    ds = load_token_dataset(DatasetRef(files=[str(data)], input_ids_column="input_ids", text_column="",
                                       context_length=2 * half, packing=False), loaded.tokenizer,
                            loaded.max_positions, vocab_size=loaded.model.config.vocab_size)
    batches = make_batches(ds, batch)
    restrictions = [Restriction(f"head_{l}.{h}", [WeightSelector(kind="head", layer=l, head=h)])
                    for l in range(LAYERS) for h in range(HEADS)]
    moved = {r["name"]: r["elements"] for r in preview(loaded.model, loaded.architecture, restrictions)}
    init = compute_init_loss(loaded.model, lm_loss, batches, config)  # L(w*) once for every head
    llc = [[None] * HEADS for _ in range(LAYERS)]
    for r in restrictions:
        sel = select_weights(loaded.model, loaded.architecture, r.weights)
        res = estimate_llc(loaded.model, lm_loss, batches, config, params=sel.params, init_loss=init)
        layer, head = r.weights[0].layer, r.weights[0].head
        llc[layer][head] = {"mean": res.llc_mean, "std": res.llc_std, "per_chain": res.llc_per_chain,
                            "mala": res.diagnostics.get("mala_acceptance"),
                            "frac_below_init": res.diagnostics.get("frac_below_init"),
                            "warnings": res.warnings, "elements": moved[r.name]}
    return {"init_loss": init, "llc": llc, "dataset_fingerprint": ds.fingerprint}


def print_table(results: list[dict]) -> None:
    steps = [r["step"] for r in results]
    head = f"{'head':>6} {'prev-tok':>8} {'induct.':>8} " + " ".join(f"{'LLC @' + str(s):>15}" for s in steps)
    print("\nper-head LLC (mean ± std over chains); attention scores at the last checkpoint")
    print(head)
    print("-" * len(head))
    last = results[-1]
    for layer in range(LAYERS):
        for h in range(HEADS):
            cells = []
            for r in results:
                c = r["llc"][layer][h]
                cells.append(f"{c['mean']:7.2f} ± {c['std']:5.2f}")
            print(f"{layer}.{h:<4} {last['previous_token'][layer][h]:8.2f} {last['induction'][layer][h]:8.2f} "
                  + " ".join(f"{c:>15}" for c in cells))
    print()
    for r in results:
        cells = [c for row in r["llc"] for c in row]
        mala = [c["mala"] for c in cells if c["mala"] is not None]
        mala_text = f"MALA acceptance {min(mala):.2f}-{max(mala):.2f}" if mala else "MALA acceptance n/a"
        print(f"step {r['step']}: L(w*) {r['init_loss']:.3f} (copyable half {r['loss_second_half']:.3f}); "
              f"{mala_text}; {cells[0]['elements']} weights per head")


def heatmap(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 2.8), squeeze=False)
    values = [[[c["mean"] for c in row] for row in r["llc"]] for r in results]
    vmax = max(v for grid in values for row in grid for v in row if math.isfinite(v))
    for ax, r, grid in zip(axes[0], results, values):
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=vmax)
        for layer in range(LAYERS):
            for h in range(HEADS):
                ind = r["induction"][layer][h]
                ax.text(h, layer, f"{grid[layer][h]:.1f}" + ("\nind" if ind > 0.3 else ""), ha="center",
                        va="center", color="w", fontsize=8)
        ax.set_title(f"step {r['step']} (copy loss {r['loss_second_half']:.2f})", fontsize=9)
        ax.set_xticks(range(HEADS))
        ax.set_yticks(range(LAYERS))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    fig.colorbar(im, ax=axes[0].tolist(), label="per-head LLC")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def trajectory_job(saved: list[dict], data: Path, args: argparse.Namespace) -> dict:
    """Every checkpoint × head restriction as one trajectory job through gRPC (local Ray + server)."""
    from cluster.local_ray import start_head
    from llc import Client
    from service.config import ServerConfig
    from service.server import BackgroundServer

    root = str(args.out.resolve())
    head = start_head(num_cpus=args.ray_cpus, joinable=False, auth=True)
    os.environ.update(head.auth_env())
    server = BackgroundServer(ServerConfig(address="127.0.0.1:0", store_url=str(args.out / "jobs.sqlite"),
                                           ray_dashboard_url=head.dashboard_url, allowed_roots=(root,))).start()
    try:
        with Client(server.address, client_id="induction-heads") as client:
            t0 = time.time()
            est = client.submit(None, {"files": [str(data.resolve())], "input_ids_column": "input_ids",
                                       "text_column": "", "context_length": 2 * args.half, "packing": False},
                                checkpoints=[(c["step"], c["path"]) for c in saved],
                                restrictions=[f"head_{l}.{h}=head:{l}.{h}" for l in range(LAYERS) for h in range(HEADS)],
                                chains=args.chains, draws=args.draws, burn_in=args.burn_in, step_size=args.step_size,
                                nbeta=args.nbeta, gamma=args.gamma, seed=args.seed, batch_size=32, init_loss="full")
            print(f"  trajectory job {est.id}: {len(saved)} checkpoints x {LAYERS * HEADS} heads", flush=True)
            done = client.wait(est.id)
            if done.state != "SUCCEEDED":
                raise SystemExit(f"trajectory job {done.state}: {done.error_code} {done.error_message}")
            result = done.result
            print(f"  done in {time.time() - t0:.0f}s", flush=True)
    finally:
        server.stop()
        head.stop()
    steps = [c["step"] for c in saved]
    best = {(l, h): max(c["induction"][l][h] for c in saved) for l in range(LAYERS) for h in range(HEADS)}
    (l1, h1) = max(best, key=best.get)  # the head that ends up doing induction
    induction = [c["induction"][l1][h1] for c in saved]
    result.plot_trajectories(str(args.out / "trajectory.png"),
                             extra={f"induction score of head {l1}.{h1}": (steps, induction)})
    # where the induction score rises fastest (per decade of steps, as the curves' axis)
    x = [math.log10(s + 1) for s in steps]
    rise = max(range(1, len(steps)), key=lambda i: (induction[i] - induction[i - 1]) / max(x[i] - x[i - 1], 1e-9))
    print(f"\n{result.table()}")
    print(f"\ninduction score of head {l1}.{h1} per checkpoint: "
          + ", ".join(f"{s}: {v:.2f}" for s, v in zip(steps, induction)))
    print(f"it rises fastest between steps {steps[rise - 1]} and {steps[rise]}")
    for t in result.trajectories:
        for b in t.boundaries:
            off = math.log10(b["step"] + 1) - (x[rise - 1] + x[rise]) / 2
            print(f"  {t.restriction}: boundary at step ≈ {b['step']} (confidence {b['confidence']:.2f}), "
                  f"{off:+.2f} decades from the induction rise")
    doc = {"steps": steps, "induction_head": f"{l1}.{h1}", "induction_score": induction,
           "induction_rise": [steps[rise - 1], steps[rise]], "result": result.to_dict()}
    (args.out / "trajectory.json").write_text(json.dumps(doc, indent=1, default=str))
    print(f"wrote {args.out / 'trajectory.png'} and {args.out / 'trajectory.json'}")
    return doc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("induction_heads_out"))
    ap.add_argument("--steps", type=int, default=600, help="training steps")
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[60, 200, 600],
                    help="training steps whose per-head LLCs are estimated")
    ap.add_argument("--half", type=int, default=16, help="length of the repeated string")
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--burn-in", type=int, default=20)
    ap.add_argument("--step-size", type=float, default=3e-4)
    ap.add_argument("--nbeta", type=float, default=30.0)
    ap.add_argument("--gamma", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 is fastest for this tiny model, above all on a busy machine")
    ap.add_argument("--service", action="store_true",
                    help="estimate through one trajectory job over gRPC (local Ray + server) instead of in-process")
    ap.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray cluster (--service)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    print(f"training a {LAYERS}-layer {HEADS}-head attention-only transformer on repeated random strings")
    checkpoints = sorted(s for s in set(args.checkpoints) if 0 <= s <= args.steps)
    saved = train(args.out, args.steps, checkpoints, args.half, batch=64, seed=args.seed)

    vocab = len(make_tiny_tokenizer())
    data = make_token_dataset(args.out / "eval.jsonl",
                              repeated_sequences(256, args.half, vocab, torch.Generator().manual_seed(12345)).tolist())
    config = SamplerConfig(step_size=args.step_size, nbeta=args.nbeta, gamma=args.gamma, chains=args.chains,
                           draws=args.draws, burn_in=args.burn_in, seed=args.seed, fetch_every=40)
    print(f"\nper-head LLCs: {LAYERS * HEADS} head restrictions x {len(saved)} checkpoints, "
          f"{config.chains} chains x {config.total_steps} SGLD steps (eps={config.step_size}, "
          f"nbeta={config.nbeta}, gamma={config.gamma})", flush=True)
    if args.service:
        trajectory_job(saved, data, args)
        print(f"({time.time() - t0:.0f}s in all)")
        return
    results = []
    for ckpt in saved:
        t1 = time.time()
        results.append({**ckpt, **head_llcs(ckpt, data, args.half, config, batch=32)})
        print(f"  checkpoint {ckpt['step']}: done in {time.time() - t1:.0f}s", flush=True)

    print_table(results)
    heatmap(results, args.out / "llc_heads.png")
    (args.out / "results.json").write_text(json.dumps({"config": config.to_dict(), "checkpoints": results}, indent=1))
    print(f"\nwrote {args.out / 'llc_heads.png'} and {args.out / 'results.json'} ({time.time() - t0:.0f}s in all)")


if __name__ == "__main__":
    main()
