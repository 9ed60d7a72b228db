"""Automatic sampler settings: nβ by rule, ε and burn-in from pilot chains.

Pure Python + numpy (no torch): the cluster driver plans pilots and chooses from
their results without loading the model; the pilots themselves are ordinary
chains (`pilot_config(...)` + a chain index) that any worker runs.

    plan = plan_pilots(config, nbeta)          # the ε grid, each pilot's steps
    results = [run chain k of plan.config(k) for k in range(len(plan.grid))]
    calibration = choose(plan, results)        # chosen ε and burn-in, the evidence
    config = resolve(config, nbeta, calibration)

The rule (docs/calibration.md): λ̂ is biased upward by a too-large ε in two ways
that short pilots measure precisely: discretisation (seen by the MALA acceptance)
and minibatch gradient noise (τ = ε·nβ²·Var(∇L_m)/4, its share of the injected
noise, by which λ̂ grows). A pilot *passes* when it did not diverge, its MALA
acceptance is ≥ MALA_TARGET, τ ≤ NOISE_TARGET, and the second half of its paired
λ̂ signal shows no falling trend (a rising one, t > RISE_LIMIT, only means the pilot was short: it
stays a candidate, read "too small", and lengthens the burn-in); the largest passing ε is chosen: the bias is
bounded there and the chain mixes fastest. λ̂ and the trend t of every pilot are
recorded (λ̂ against ε is the plot to look at) and the main run's own trend test
flags an ε too small for its length. A pilot hotter than the target (equipartition >
1 + HEAT_LIMIT) also fails. Burn-in: the MSER truncation point of the chosen pilot's trace
(White 1997), at least one fetch block; as long as the draws when that pilot shows no
plateau (rising, or fewer than PILOT_ESS_MIN effective draws in its last half).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cluster.contract.sampler import AUTO, SamplerConfig
from cluster.engine.diagnostics import effective_sample_size, half_trend, mser_truncation
from cluster.engine.result import DIVERGED, HEAT_LIMIT, TREND_LIMIT, ChainResult

# The pilot grid in units of ε·nβ (the step's scale against the loss's curvature per
# example): half-decades from 1e-4 to 1, where every model in tests/bench sits.
GRID_LOG10 = tuple(np.arange(-4.0, 0.01, 0.5))
MIN_PILOT_STEPS = 60
MALA_TARGET = 0.8  # discretisation: acceptance of the proposals
NOISE_TARGET = 0.05  # minibatch gradient noise: ≤ 5% of the injected noise
NBETA_FAR = 10.0  # a user nβ more than this factor off the rule gets a warning
# A pilot starts at w* (λ̂ signal 0) and can only fail by still rising, so its trend test is one-sided:
# t > 2 (p ≈ 0.02) reads "too small" (still a candidate; the main run then burns in longer). A short
# pilot's test has little power, so waiting for the two-sided 3 let clear rises (t = 2.1-2.9) read "ok".
# A falling trend is not expected from w*: it keeps the two-sided TREND_LIMIT.
RISE_LIMIT = 2.0
# The chosen pilot certifies its MSER burn-in only if it shows a plateau: a last half with at least this
# many effective draws (each quarter mean of the trend test then rests on ≥ 10). The DLN theory rows of
# 2,100-104,000 weights read ESS 2-9 there, rose through the whole main run with MSER's 500-700 steps of
# burn-in and came out -9% to -15%; the 100-800-weight rows read 32-61.
PILOT_ESS_MIN = 20
PILOT_SEED_SALT = 0x5EED_CA11  # pilots' chain seeds apart from the main chains'


def nbeta_rule(n: int) -> float:
    """Watanabe's WBIC inverse temperature times n: nβ = n / log n."""
    return n / math.log(n)


def resolve_nbeta(config: SamplerConfig, n: int | None) -> tuple[float, dict[str, Any]]:
    """nβ and how it was set: `n` is the number of terms averaged in the loss over the
    sampling set (examples; tokens for per-token language-model losses)."""
    info: dict[str, Any] = {"sample_size": n, "rule": "n/log n", "warnings": []}
    if n is not None and n >= 3:
        info["rule_value"] = nbeta_rule(n)
    if config.nbeta != AUTO:
        info["source"] = "user"
        rule = info.get("rule_value")
        if rule is not None and not (1 / NBETA_FAR <= config.nbeta / rule <= NBETA_FAR):
            info["warnings"].append(
                f"nbeta = {config.nbeta:g} is {config.nbeta / rule:.3g}× the rule n/log n = {rule:.4g} for the "
                f"sampling set's n = {n}: λ̂ is the learning coefficient at that temperature, far from WBIC's. "
                "Leave nbeta unset to use the rule.")
        return float(config.nbeta), info
    if n is None or n < 3:
        from cluster.contract.sampler import ConfigError

        raise ConfigError("nbeta", "cannot choose nβ = n/log n: the size of the sampling set is unknown "
                                   "(batches without a length); set nbeta or pass sample_size")
    info["source"] = "rule"
    return info["rule_value"], info


@dataclass(frozen=True)
class PilotPlan:
    """The pilots of one estimate: one chain per ε of `grid`, `steps` steps each, every step a draw."""

    base: SamplerConfig
    nbeta: float
    grid: tuple[float, ...]
    steps: int
    main_steps: int

    def config(self) -> SamplerConfig:
        """The config of every pilot; pilot k runs chain k of it at step size grid[k] (config_for)."""
        return self.config_for(0)

    def config_for(self, k: int) -> SamplerConfig:
        # mala=True whatever the main run asks: the verdicts rest on MALA acceptance and τ
        return self.base.replace(step_size=self.grid[k], nbeta=self.nbeta, burn_in=0, draws=self.steps,
                                 steps_between_draws=1, chains=len(self.grid), mala=True,
                                 seed=(self.base.seed + PILOT_SEED_SALT) % 2**63,
                                 fetch_every=min(self.base.fetch_every, max(1, self.steps // 4)))

    @property
    def cost_steps(self) -> int:
        return self.steps * len(self.grid)


def plan_pilots(config: SamplerConfig, nbeta: float) -> PilotPlan | None:
    """Pilots for the auto settings of `config`, or None when nothing is left to choose."""
    if config.step_size != AUTO and config.burn_in != AUTO:
        return None
    main = config.chains * config.draws * config.steps_between_draws
    grid = tuple(10 ** g / nbeta for g in GRID_LOG10) if config.step_size == AUTO else (float(config.step_size),)
    grid = tuple(min(e, 1.0) for e in grid)
    steps = max(MIN_PILOT_STEPS, int(config.calibration_budget * main / len(grid)))
    return PilotPlan(base=config, nbeta=nbeta, grid=grid, steps=steps, main_steps=main)


def _pilot_summary(eps: float, c: ChainResult, nbeta: float, init_loss: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"step_size": eps, "llc": None, "llc_se": None, "mala_acceptance": c.mala_acceptance,
                           "gradient_noise": c.gradient_noise, "equipartition": c.equipartition, "trend_t": None, "burn_in": None, "status": c.status}
    if c.status != "succeeded" or len(c.loss_trace) < 8:
        row["verdict"] = "diverged" if c.status == DIVERGED else c.status
        row["why"] = c.message
        return row
    trace = np.asarray(c.loss_trace)
    ref = np.asarray(c.init_trace) if len(c.init_trace) == trace.size else (init_loss or 0.0)
    signal = nbeta * (trace - ref)
    last = signal[signal.size // 2:]
    row["llc"] = float(last.mean())
    row["ess"] = effective_sample_size(last[None, :]) if last.size >= 4 else None
    row["llc_se"] = float(last.std(ddof=1) / math.sqrt(row["ess"])) if row["ess"] else None
    row["trend_t"] = half_trend(last[None, :]) if last.size >= 8 else 0.0
    row["burn_in"] = mser_truncation(signal)
    if c.mala_acceptance is not None and c.mala_acceptance < MALA_TARGET:
        row["verdict"], row["why"] = "too large", f"MALA acceptance {c.mala_acceptance:.2f} < {MALA_TARGET}"
    elif c.gradient_noise is not None and c.gradient_noise > NOISE_TARGET:
        row["verdict"], row["why"] = "too large", (f"minibatch gradient noise τ = {c.gradient_noise:.2f} > "
                                                   f"{NOISE_TARGET} of the injected noise")
    elif c.equipartition is not None and c.equipartition > 1 + HEAT_LIMIT:  # hotter than the target (result.py)
        row["verdict"], row["why"] = "too large", (f"equipartition {c.equipartition:.2f} > {1 + HEAT_LIMIT:g}: "
                                                   "the chain is hotter than the posterior")
    elif row["trend_t"] < -TREND_LIMIT:
        row["verdict"], row["why"] = "not stationary", f"λ̂ still falling at the end (t = {row['trend_t']:.1f})"
    elif row["trend_t"] > RISE_LIMIT:
        row["verdict"], row["why"] = "too small", f"λ̂ still rising at the end (t = {row['trend_t']:.1f})"
    else:
        row["verdict"], row["why"] = "ok", ""
    return row


def choose(plan: PilotPlan, results: list[ChainResult], init_loss: float | None = None) -> dict[str, Any]:
    """The calibration record: every pilot's row, the chosen ε and burn-in, why, and the cost."""
    by_chain = {c.chain: c for c in results}
    rows = [_pilot_summary(eps, by_chain[k], plan.nbeta, init_loss) if k in by_chain else
            {"step_size": eps, "verdict": "missing", "why": "pilot did not finish", "llc": None}
            for k, eps in enumerate(plan.grid)]
    warnings: list[str] = []
    base = plan.base
    if base.step_size != AUTO:
        index, why = 0, "step_size set by the user; the pilot only chose the burn-in"
        if rows[0]["verdict"] != "ok":
            warnings.append(f"the pilot at the given step_size {plan.grid[0]:.3g} reads '{rows[0]['verdict']}' "
                            f"({rows[0]['why']}); leave step_size unset to calibrate it.")
    else:
        index, why = _choose_step(rows, warnings)
        if not any(r.get("mala_acceptance") is not None or r.get("gradient_noise") is not None for r in rows):
            warnings.append("no pilot measured MALA acceptance or gradient noise (the lean memory mode tracks "
                            "neither), so a too-large ε could only be seen as a divergence or a trend: check the "
                            "chosen step_size without compute.lean_memory on a smaller model, or set step_size.")
    step_size = plan.grid[index]
    if base.step_size == AUTO and rows[index]["verdict"] in ("ok", "too small"):  # "too small": only short
        step_size, refined = _refine(rows, index)
        why += refined
    chosen = rows[index]
    if base.burn_in == AUTO:
        burn_in = max(int(chosen.get("burn_in") or 0), base.fetch_every if chosen["verdict"] == "ok" else 0)
        burn_why = f"MSER truncation of the pilot at ε = {plan.grid[index]:.3g}"
        if chosen["verdict"] != "ok" or (chosen.get("ess") or 0) < PILOT_ESS_MIN:
            # the pilot did not show its own plateau, so its MSER point says nothing about the main chain's:
            # burn in as long as the draws (Stan's default warm-up, half the chain); the main run's MSER
            # and trend test then judge the rest
            burn_in = max(burn_in, plan.steps, base.draws * base.steps_between_draws)
            burn_why += (f" too short to show a plateau ({chosen['verdict']}, ESS {chosen.get('ess') or 0:.0f} "
                         f"< {PILOT_ESS_MIN} in its last half): as long as the draws")
    else:
        burn_in, burn_why = int(base.burn_in), "set by the user"
    for r in rows:
        r["chosen"] = r is chosen
    main_total = base.chains * (burn_in + base.draws * base.steps_between_draws)
    return {
        "pilots": rows,
        "step_size": step_size,
        "step_size_reason": why,
        "burn_in": burn_in,
        "burn_in_reason": burn_why,
        "discard_by_mser": base.burn_in == AUTO,  # the main run drops its own MSER warm-up (LLCResult.from_chains)
        "pilot_steps": plan.steps,
        "cost": {"pilot_steps": plan.cost_steps, "main_steps": main_total,
                 "fraction": plan.cost_steps / main_total if main_total else None},
        "warnings": warnings,
    }


def _choose_step(rows: list[dict[str, Any]], warnings: list[str]) -> tuple[int, str]:
    # A pilot still rising at a larger ε says the pilot was short, not that ε is too large:
    # it stays a candidate (the main run is longer, and its burn-in and trend test follow).
    ok = [i for i, r in enumerate(rows) if r["verdict"] in ("ok", "too small")]
    if ok:
        i = ok[-1]
        nxt = rows[i + 1]["why"] if i + 1 < len(rows) else "the top of the grid"
        return i, (f"the largest ε with MALA ≥ {MALA_TARGET}, gradient noise τ ≤ {NOISE_TARGET} and no falling trend; "
                   f"the next larger: {nxt}")
    moving = [i for i, r in enumerate(rows) if r["verdict"] in ("too small", "not stationary")]
    if moving:
        i = moving[-1]
        warnings.append(
            f"no pilot passed every check: up to ε = {rows[i]['step_size']:.2g} λ̂ was still moving after "
            f"{rows[i].get('pilot_steps', 'the')} pilot steps, and larger ε failed. Raise draws (the pilots get "
            "calibration_budget of the main run's steps), or set step_size and burn_in by hand.")
        return i, "the largest ε that passed the bias checks (λ̂ was still moving in every pilot)"
    warnings.append("every pilot diverged or failed the bias checks, even at the smallest ε of the grid "
                    f"({rows[0]['step_size']:.2g}): check that w* is a trained minimum, raise gamma, or set step_size.")
    return 0, "the smallest ε of the grid (every pilot failed)"


def _refine(rows: list[dict[str, Any]], i: int) -> tuple[float, str]:
    """Where between the chosen pilot and the next larger one the checks that failed there cross their
    targets (MALA linear, τ ∝ ε, both on log ε): the half-decade grid alone picks up to 3.2× below the
    largest ε the rule allows, and a chain that short of its ε stops short of λ on a fixed budget."""
    lo, hi = rows[i], rows[i + 1] if i + 1 < len(rows) else None
    if hi is None or hi["verdict"] != "too large":
        return lo["step_size"], ""
    fractions = []
    a, b = lo.get("mala_acceptance"), hi.get("mala_acceptance")
    if a is not None and b is not None and b < MALA_TARGET <= a:
        fractions.append((a - MALA_TARGET) / (a - b))
    a, b = lo.get("gradient_noise"), hi.get("gradient_noise")
    if a and b and a <= NOISE_TARGET < b:
        fractions.append(math.log(NOISE_TARGET / a) / math.log(b / a))
    if not fractions:
        return lo["step_size"], ""
    t = min(max(min(fractions), 0.0), 1.0)
    eps = lo["step_size"] * (hi["step_size"] / lo["step_size"]) ** t
    return eps, f"; refined to {eps:.3g}, where the checks that failed at the next pilot cross their targets"


def resolve(config: SamplerConfig, nbeta: float, calibration: dict[str, Any] | None) -> SamplerConfig:
    """`config` with numbers for every auto setting."""
    changes: dict[str, Any] = {"nbeta": nbeta}
    if calibration is not None:
        changes["step_size"] = calibration["step_size"]
        changes["burn_in"] = calibration["burn_in"]
    elif config.burn_in == AUTO:
        changes["burn_in"] = 0
    return config.replace(**changes)
