"""Deep linear networks: the engine's λ̂ against Aoyagi's closed form, one row per shape.

    .venv/bin/python bench/theory_table.py            # full table (estimated 15-20 min on an idle 2-core machine)
    .venv/bin/python bench/theory_table.py --quick    # the two smallest rows
    .venv/bin/python bench/theory_table.py --rows 2 4 --step-size 1e-6 --steps 4000   # tuning
    .venv/bin/python bench/theory_table.py --auto     # ε, nβ, burn-in chosen by the product

Prints shape, parameters, rank, true λ, λ̂ ± std (over chains), relative error,
MALA acceptance, time; exits 1 if a row misses its tolerance (15%), or the median
relative error exceeds 10%, or a row diverged.

Setup (after Furman & Lau 2024, "Estimating the local learning coefficient at scale"):
- Model f(x) = W_L ⋯ W_1 x without biases; w* keeps a random orthogonal r×r block in
  the corner of every W_i and zeros elsewhere (testbeds/dln.py): the most singular
  point of the true set, where the local learning coefficient is Aoyagi's λ.
- Data: n = 10,000 examples x ~ U[-10, 10]^H_0, y = f_{w*}(x) (noiseless);
  loss ½·mean‖f(x) - y‖²; batches of 100 reshuffled every pass (per-chain seeds).
  Furman & Lau used 500; at 8,400 parameters both gave the same λ̂ within 2%, and 100
  is 5× cheaper on a CPU.
- SGLD (plain, not RMSprop), γ = 1, nβ = n / log n, L(w*) over the whole set (it is 0).
- Step size ε and steps T per row (ROWS below): λ̂ of a chain started at w* grows
  with ε·T (how far it has diffused) and sits on λ for ε·T ≈ 0.012-0.02 on every
  shape tried; ε shrinks as the layers widen so the MALA acceptance stays ≳ 0.6
  (a larger ε inflates λ̂). See bench/README.md for the measurements behind this.
- Draws: the last 10% of steps (burn_in = 0.9·T, every step a draw); 4 chains.
--rmsprop runs RMSprop-SGLD instead (with --auto: measured in docs/calibration.md). At w* the
gradient is exactly 0, so G = 1/(√V̂ + a) ≈ 1/a in the flat directions: the former a = 1e-5 threw
every chain off; the default a = 0.1 does not.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.contract.sampler import SamplerConfig  # noqa: E402

from cluster.engine.estimate import estimate_llc
from testbeds.dln import ShuffledBatches, dln_loss, make_dln, make_dln_data, parameter_count  # noqa: E402
from testbeds.theory import deep_linear_network  # noqa: E402

N_EXAMPLES = 10_000
BATCH = 100
GAMMA = 1.0
CHAINS = 4
DRAW_FRACTION = 0.1
ROW_TOLERANCE = 0.15
MEDIAN_TOLERANCE = 0.10


@dataclass(frozen=True)
class Row:
    widths: tuple[int, ...]
    rank: int
    step_size: float
    steps: int

    @property
    def params(self) -> int:
        return parameter_count(self.widths)

    @property
    def truth(self) -> float:
        return deep_linear_network(self.widths, self.rank)


# ε·T ≈ 0.015-0.02 on every row; ε shrinks with width so the MALA acceptance stays ≳ 0.6.
ROWS = [
    Row((10, 5, 10), 2, 1e-5, 2_000),
    Row((10, 20, 20, 10), 5, 3e-6, 5_000),
    Row((20, 30, 30, 20), 5, 3e-6, 6_000),
    Row((40, 60, 60, 40), 10, 2e-6, 8_000),
    Row((80, 120, 120, 80), 10, 1.3e-6, 10_000),
    Row((160, 200, 200, 160), 10, 1e-6, 13_000),
]
QUICK = [0, 1]  # rows of --quick (the same settings: shorter chains would stop short of λ)


def sampler_config(row: Row, *, chains: int = CHAINS, seed: int = 0) -> SamplerConfig:
    draws = max(1, round(row.steps * DRAW_FRACTION))
    return SamplerConfig(
        method="sgld",
        step_size=row.step_size,
        nbeta=N_EXAMPLES / math.log(N_EXAMPLES),
        gamma=GAMMA,
        chains=chains,
        burn_in=row.steps - draws,
        draws=draws,
        seed=seed,
        init_loss="full",
        mala=True,
        fetch_every=500,
    )


def auto_config(row: Row, *, chains: int = CHAINS, seed: int = 0) -> SamplerConfig:
    """--auto: ε, nβ and burn-in left to the product; the row's step count is only the budget
    (draws), and L(w*) is paired (the default)."""
    return SamplerConfig(method="sgld", gamma=GAMMA, chains=chains, draws=row.steps, seed=seed, fetch_every=500)


def run_row(row: Row, *, chains: int = CHAINS, seed: int = 0, workers: int = 1, auto: bool = False,
            method: str = "sgld", rmsprop_eps: float | None = None) -> dict:
    model = make_dln(row.widths, row.rank, seed=seed)
    x, y = make_dln_data(model, N_EXAMPLES, seed=seed)
    config = auto_config(row, chains=chains, seed=seed) if auto else sampler_config(row, chains=chains, seed=seed)
    config = config.replace(method=method, **({"rmsprop_eps": rmsprop_eps} if rmsprop_eps else {}))
    start = time.perf_counter()
    result = estimate_llc(model, dln_loss, ShuffledBatches(x, y, BATCH), config, workers=workers)
    seconds = time.perf_counter() - start
    rel = abs(result.llc_mean - row.truth) / row.truth if math.isfinite(result.llc_mean) else math.inf
    return {
        "row": row,
        "llc": result.llc_mean,
        "std": result.llc_std,
        "rel": rel,
        "mala": result.diagnostics["mala_acceptance"],
        "diverged": result.diagnostics["diverged_chains"],
        "warnings": result.warnings,
        "seconds": seconds,
        "chosen": result.config,
        "calibration": result.calibration or {},
    }


def format_row(r: dict) -> str:
    row = r["row"]
    shape = "-".join(map(str, row.widths))
    mala = f"{r['mala']:.2f}" if r["mala"] is not None else "  - "
    est = f"{r['llc']:9.1f} ± {r['std']:6.1f}" if math.isfinite(r["llc"]) else f"{'diverged':>18}"
    mark = "" if r["rel"] <= ROW_TOLERANCE and not r["diverged"] else "  MISS"
    cfg = r["chosen"]
    cost = (r["calibration"].get("cost") or {}).get("fraction")
    auto = f"  nβ {cfg.nbeta:.0f} burn-in {cfg.burn_in} pilots {cost:.0%}" if cost is not None else ""
    return (f"{shape:<24}{row.params:>8}{row.rank:>5}{row.truth:>9.1f} {est}{r['rel']:>8.1%}{mala:>6}"
            f"{cfg.step_size:>9.1e}{cfg.total_steps:>7}{r['seconds']:>7.0f}s{mark}{auto}")


HEADER = f"{'shape':<24}{'params':>8}{'rank':>5}{'true λ':>9} {'λ̂ ± std':>18}{'rel.err':>8}{'MALA':>6}{'ε':>9}{'steps':>7}{'time':>8}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the two smallest rows")
    parser.add_argument("--rows", type=int, nargs="*", help="indices into ROWS (default: all)")
    parser.add_argument("--step-size", type=float, help="override ε for every row (tuning)")
    parser.add_argument("--steps", type=int, help="override steps per chain for every row (tuning)")
    parser.add_argument("--chains", type=int, default=CHAINS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--workers", type=int, default=1, help="chains run concurrently (estimate_llc workers)")
    parser.add_argument("--auto", action="store_true",
                        help="ε, nβ and burn-in chosen by the product (pilots + rules); the row's steps are the draws")
    parser.add_argument("--rmsprop", action="store_true",
                        help="RMSprop-preconditioned SGLD (default a = rmsprop_eps) instead of plain SGLD")
    parser.add_argument("--rmsprop-eps", type=float, help="RMSprop's a in G = 1/(√V̂ + a) (default: SamplerConfig's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    indices = args.rows if args.rows is not None else (QUICK if args.quick else range(len(ROWS)))
    rows = []
    for i in indices:
        if not 0 <= i < len(ROWS):
            parser.error(f"--rows: index {i} is not in [0, {len(ROWS)})")
        row = ROWS[i]
        if args.step_size or args.steps:
            row = Row(row.widths, row.rank, args.step_size or row.step_size, args.steps or row.steps)
        rows.append(row)

    draws = ("draws = the row's steps, ε / nβ / burn-in chosen by the product" if args.auto
             else f"draws = last {DRAW_FRACTION:.0%} of steps")
    print(f"n = {N_EXAMPLES}, batch = {BATCH}, nβ = n/log n = {N_EXAMPLES / math.log(N_EXAMPLES):.1f}, γ = {GAMMA}, "
          f"{args.chains} chains, {draws}, {'RMSprop-SGLD' if args.rmsprop else 'plain SGLD'}", flush=True)
    print(HEADER, flush=True)
    results = []
    for row in rows:
        r = run_row(row, chains=args.chains, seed=args.seed, workers=args.workers, auto=args.auto,
                    method="rmsprop_sgld" if args.rmsprop else "sgld", rmsprop_eps=args.rmsprop_eps)
        results.append(r)
        print(format_row(r), flush=True)
        for p in r["calibration"].get("pilots", []):
            llc = f"{p['llc']:.1f}" if p.get("llc") is not None else "-"
            mala = f"{p['mala_acceptance']:.2f}" if p.get("mala_acceptance") is not None else "-"
            noise = f"{p['gradient_noise']:.3f}" if p.get("gradient_noise") is not None else "-"
            equi = f"{p['equipartition']:.2f}" if p.get("equipartition") is not None else "-"
            trend = f"{p['trend_t']:.1f}" if p.get("trend_t") is not None else "-"
            print(f"    pilot ε {p['step_size']:.2e}  λ̂ {llc:>8}  MALA {mala}  τ {noise}  equipartition {equi}  t {trend:>5}  MSER {p.get('burn_in')}  ESS {p.get('ess') or 0:.0f}  {p['verdict']}"
                  f"{' ← chosen' if p.get('chosen') else ''}", flush=True)
        for w in r["warnings"]:
            print(f"    warning: {w}", flush=True)

    errors = [r["rel"] for r in results]
    median = statistics.median(errors)
    misses = [r for r in results if r["rel"] > ROW_TOLERANCE or r["diverged"]]
    print(f"median relative error {median:.1%} (target ≤ {MEDIAN_TOLERANCE:.0%}); "
          f"{len(misses)} of {len(results)} rows outside ±{ROW_TOLERANCE:.0%}")
    return 1 if misses or median > MEDIAN_TOLERANCE else 0


if __name__ == "__main__":
    sys.exit(main())
