"""Results of an estimate: per chain, and combined over chains with diagnostics."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cluster.contract.sampler import SamplerConfig
from cluster.engine.diagnostics import (block_means, effective_sample_size, half_trend, mean_interval, mser_truncation,
                                        split_rhat)

SUCCEEDED, DIVERGED, FAILED = "succeeded", "diverged", "failed"

# Warning thresholds on the diagnostics (docs/calibration.md says why these values).
RHAT_LIMIT = 1.05  # rank-normalised split-R̂ of the paired λ̂ signal
TREND_LIMIT = 3.0  # |t| of second-half minus first-half mean
ESS_LIMIT = 50  # bulk ESS over all chains
MALA_LIMIT = 0.5
NOISE_LIMIT = 0.1  # τ, the minibatch gradient noise relative to the injected noise
# Equipartition, E = mean (w - w*)·∇U per moving weight: exactly 1 at the target, whatever the potential
# (E[δᵢ ∂ᵢU] = 1 by parts). Flat directions that have not spread read < 1, and can only pull E down,
# so E > 1 + HEAT_LIMIT means the chain is hotter than the posterior by at least that much: discretisation
# (1/(1 - εa/4) along a curvature a) or gradient noise (1 + τ), which inflate λ̂ alike. 0.1: as NOISE_LIMIT.
HEAT_LIMIT = 0.1
# E < 1 alone cannot say "ε too small": a singular model's flat directions (held only by γ, which spread
# on the scale 1/(εγ)) read ≪ 1 while λ̂ sits on λ (the DLN theory rows: 0.2-0.4 within 5%). So E below
# EQUIPARTITION_LIMIT warns only when ε could be raised at least 2x and still pass the pilots' checks:
# MALA ≥ SLACK_MALA (σ of log α grows as ε^1.5, so 0.95 at ε reads ≈ 0.86 ≥ 0.8 at 2ε) and τ ≤ SLACK_NOISE
# (τ ∝ ε: half the pilots' 0.05).
EQUIPARTITION_LIMIT = 0.5
SLACK_MALA = 0.95
SLACK_NOISE = 0.025


@dataclass
class ChainResult:
    """One chain. `loss_trace` holds the minibatch loss at each draw;
    `init_trace` L_m(w*) on the same batches (recorded in every mode: the
    diagnostics use the paired difference; λ̂ uses it in paired mode only)."""

    chain: int
    seed: int
    llc: float
    status: str = SUCCEEDED
    loss_trace: list[float] = field(default_factory=list)
    init_trace: list[float] = field(default_factory=list)
    mala_acceptance: float | None = None
    frac_below_init: float | None = None
    # τ = ε·nβ²·Var(∇L_m)/4: the minibatch gradient noise's share of the injected noise (λ̂ grows by ≈ τ)
    gradient_noise: float | None = None
    # mean of (w - w*)·∇U / d over the draws: 1 for a chain at equilibrium, ≪ 1 while it still spreads out
    equipartition: float | None = None
    steps: int = 0
    message: str = ""
    attempts: int = 1
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the node a driver placed it on

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ChainResult":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _nanmean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(vals)) if vals else None


@dataclass
class LLCResult:
    llc_mean: float
    llc_std: float
    llc_per_chain: list[float]
    init_loss: float
    chains: list[ChainResult]
    diagnostics: dict[str, Any]
    warnings: list[str]
    config: SamplerConfig
    moving_elements: int = 0
    calibration: dict[str, Any] | None = None  # how automatic settings were chosen (cluster.engine.calibrate)

    @property
    def loss_traces(self) -> list[list[float]]:
        return [c.loss_trace for c in self.chains]

    @property
    def llc_sem(self) -> float:
        """Standard error of llc_mean: the spread over chains, or the draws' Monte Carlo
        error (sd/√ESS) when that is larger (diagnostics.mean_interval)."""
        sem = self.diagnostics.get("llc_sem")
        return float(sem) if sem is not None and sem > 0 else float("nan")

    @property
    def llc_interval(self) -> tuple[float, float]:
        """95% interval of llc_mean (t with chains - 1 dof, widened for autocorrelation)."""
        half = self.diagnostics.get("llc_half_width")
        if half is None or not math.isfinite(self.llc_mean):
            return (float("nan"), float("nan"))
        return (self.llc_mean - half, self.llc_mean + half)

    @property
    def diverged_chains(self) -> list[int]:
        return [c.chain for c in self.chains if c.status == DIVERGED]

    def to_dict(self) -> dict[str, Any]:
        return {
            "llc_mean": self.llc_mean,
            "llc_std": self.llc_std,
            "llc_sem": self.llc_sem,
            "llc_interval": list(self.llc_interval),
            "llc_per_chain": self.llc_per_chain,
            "init_loss": self.init_loss,
            "loss_traces": self.loss_traces,
            "diagnostics": self.diagnostics,
            "warnings": self.warnings,
            "chains": [c.to_dict() for c in self.chains],
            "config": self.config.to_dict(),
            "moving_elements": self.moving_elements,
            "calibration": self.calibration,
        }

    @classmethod
    def from_chains(
        cls, chains: list[ChainResult], config: SamplerConfig, init_loss: float, moving_elements: int = 0, *,
        paired: bool | None = None, calibration: dict[str, Any] | None = None,
    ) -> "LLCResult":
        """Combine chains (possibly run on different workers) into one estimate.

        `config` has numeric nbeta/step_size (the resolved settings); `paired`: whether
        λ̂ used each draw's own L_m(w*) (default: unless config.init_loss == "full")."""
        paired = config.init_loss != "full" if paired is None else paired
        chains = sorted(chains, key=lambda c: c.chain)
        nbeta = float(config.nbeta) if isinstance(config.nbeta, (int, float)) else float("nan")
        if calibration and calibration.get("discard_by_mser"):
            chains, calibration = _drop_warm_up(chains, nbeta, init_loss, paired, calibration)
        ok = [c for c in chains if c.status == SUCCEEDED and math.isfinite(c.llc)]
        values = np.array([c.llc for c in ok])
        mean = float(values.mean()) if len(ok) else float("nan")
        std = float(values.std(ddof=1)) if len(ok) > 1 else float("nan")
        diagnostics: dict[str, Any] = {
            "rhat": None,
            "ess": None,
            "ess_tail": None,
            "trend_t": None,
            "llc_sem": None,
            "llc_half_width": None,
            "mala_acceptance": _nanmean([c.mala_acceptance for c in ok]),
            "frac_below_init": _nanmean([c.frac_below_init for c in ok]),
            "gradient_noise": _nanmean([c.gradient_noise for c in ok]),
            "equipartition": _nanmean([c.equipartition for c in ok]),
            "diverged_chains": [c.chain for c in chains if c.status == DIVERGED],
            "failed_chains": [c.chain for c in chains if c.status == FAILED],
            "init_loss_offset": None,
        }
        lengths = {len(c.loss_trace) for c in ok}
        estimator = None
        if ok and len(lengths) == 1 and lengths.pop() >= 4:
            traces = np.array([c.loss_trace for c in ok])
            has_pairs = all(len(c.init_trace) == traces.shape[1] for c in ok)
            if has_pairs:  # the paired difference: batch-to-batch noise cancels
                signal = nbeta * (traces - np.array([c.init_trace for c in ok]))
            else:  # older results without pairs: block means damp the batch noise
                signal = block_means(nbeta * traces)
            if signal.shape[1] >= 4:
                diagnostics["rhat"] = split_rhat(signal)
                diagnostics["ess"] = effective_sample_size(signal)
                diagnostics["ess_tail"] = effective_sample_size(signal, "tail")
                diagnostics["trend_t"] = half_trend(signal)
            estimator = signal if (paired and has_pairs) else nbeta * traces  # the draws λ̂ averages
            if has_pairs and not paired:
                diagnostics["init_loss_offset"] = _init_loss_offset(ok, init_loss, nbeta)
        if ok:
            half, sem = mean_interval(values, estimator)
            diagnostics["llc_half_width"] = half if math.isfinite(half) else None
            diagnostics["llc_sem"] = sem if sem > 0 else None
        result = cls(
            llc_mean=mean,
            llc_std=std,
            llc_per_chain=[c.llc for c in chains],
            init_loss=init_loss,
            chains=chains,
            diagnostics=diagnostics,
            warnings=[],
            config=config,
            moving_elements=moving_elements,
            calibration=calibration,
        )
        result.warnings = _warnings(result)
        return result


def _drop_warm_up(chains: list[ChainResult], nbeta: float, init_loss: float, paired: bool,
                  calibration: dict[str, Any]) -> tuple[list[ChainResult], dict[str, Any]]:
    """Burn-in chosen from the traces: drop the leading draws that MSER finds on the
    chains' mean paired signal, and recompute each chain's λ̂ from the rest."""
    ok = [c for c in chains if c.status == SUCCEEDED and c.loss_trace and len(c.init_trace) == len(c.loss_trace)]
    if not ok or len({len(c.loss_trace) for c in ok}) != 1:
        return chains, calibration
    pooled = np.mean([np.subtract(c.loss_trace, c.init_trace) for c in ok], axis=0)
    drop = mser_truncation(nbeta * pooled)
    out = []
    for c in chains:
        if c in ok and drop:
            trace, inits = c.loss_trace[drop:], c.init_trace[drop:]
            ref = np.asarray(inits) if paired else init_loss
            c = dataclasses.replace(c, loss_trace=trace, init_trace=inits,
                                    llc=float(nbeta * np.mean(np.asarray(trace) - ref)))
        out.append(c)
    return out, {**calibration, "discarded_draws": drop, "discard_by_mser": False}


def _init_loss_offset(ok: list[ChainResult], init_loss: float, nbeta: float) -> dict[str, float]:
    """nβ·(L(w*) used - mean L_m(w*) on the draws' own batches) and its standard error.

    λ̂ = nβ·(mean L_m(w_t) - L(w*)) inherits any error of L(w*) times nβ; the draws'
    own batches give an independent check of it."""
    pairs = np.concatenate([np.asarray(c.init_trace, dtype=np.float64) for c in ok])
    offset = nbeta * (init_loss - float(pairs.mean()))
    se = nbeta * float(pairs.std(ddof=1)) / math.sqrt(pairs.size) if pairs.size > 1 else 0.0
    return {"offset": offset, "se": se}


def _warnings(r: LLCResult) -> list[str]:
    """Plain-language warnings a user should read before trusting the number."""
    out = []
    d = r.diagnostics
    bad = [c for c in r.chains if c.status != SUCCEEDED]
    for c in bad:
        out.append(f"chain {c.chain} {c.status}: {c.message} It is excluded from the mean.")
    if r.chains and len(bad) == len(r.chains):
        out.append("every chain diverged or failed: there is no estimate. Lower step_size (ε) or raise gamma (γ).")
        return out
    if len(r.chains) - len(bad) == 1:
        out.append("only one chain succeeded: llc_std is undefined; run more chains for an error bar.")
    if math.isfinite(r.llc_mean) and r.llc_mean < 0:
        out.append(
            f"negative LLC estimate ({r.llc_mean:.4g}): w* is not a local minimum of the loss, or ε/γ are off. "
            "Train further, raise gamma, or lower step_size."
        )
    lo, _ = r.llc_interval
    if r.moving_elements and math.isfinite(lo) and lo > r.moving_elements / 2:
        out.append(
            f"LLC estimate {r.llc_mean:.4g} (95% interval from {lo:.4g}) exceeds d/2 = {r.moving_elements / 2:g}, the "
            f"largest value possible for {r.moving_elements} moving weights: the chain is not sampling the local "
            "posterior. Lower step_size (ε)."
        )
    if d.get("frac_below_init") is not None and d["frac_below_init"] > 0.5:
        out.append(
            f"{d['frac_below_init']:.0%} of draws have loss below L(w*): w* is not a local minimum "
            "(or nβ·noise dominates); the estimate is unreliable."
        )
    offset = d.get("init_loss_offset")
    if offset and abs(offset["offset"]) > 3 * offset["se"] and abs(offset["offset"]) > 0.1 * max(abs(r.llc_mean), 1.0):
        source = (f"the first init_loss_batches={r.config.init_loss_batches} batches"
                  if r.config.init_loss_batches else "the given init_loss")
        out.append(
            f"L(w*) = {r.init_loss:.6g} from {source} differs from L(w*) on the draws' own batches: it shifts λ̂ by "
            f"{-offset['offset']:+.4g} (± {offset['se']:.2g}). Set init_loss_batches=0 (the whole sampling set) or "
            "init_loss='paired'."
        )
    trend = d.get("trend_t")
    if trend is not None and abs(trend) > TREND_LIMIT:
        direction = "still rising" if trend > 0 else "still falling"
        out.append(
            f"the λ̂ trace is {direction} between the first and second half of the draws (t = {trend:.1f}): the chains "
            "have not reached the local posterior. Raise burn_in or draws, or raise step_size (ε) if it is small "
            "(leave step_size unset to calibrate it)."
        )
    if d.get("rhat") is not None and d["rhat"] > RHAT_LIMIT:
        out.append(
            f"split R-hat = {d['rhat']:.3f} > {RHAT_LIMIT} on the paired λ̂ signal: the chains disagree or are not "
            "stationary. Add burn_in or draws; if step_size was set by hand, leave it unset to calibrate it."
        )
    if d.get("ess") is not None and d["ess"] < ESS_LIMIT:
        out.append(
            f"only {d['ess']:.0f} effective draws (bulk ESS): the draws are strongly autocorrelated and the error "
            "bar is rough. Raise draws (or steps_between_draws)."
        )
    equi, mala, noise = d.get("equipartition"), d.get("mala_acceptance"), d.get("gradient_noise")
    if (equi is not None and equi < EQUIPARTITION_LIMIT and mala is not None and mala >= SLACK_MALA
            and (noise is None or noise <= SLACK_NOISE)):
        out.append(
            f"the chains have not spread to the local posterior's width: (w - w*)·∇U averages {equi:.2f} per moving "
            f"weight over the draws (1 at equilibrium) while the proposals are almost all accepted (MALA {mala:.2f}). "
            "step_size (ε) is too small for this many steps: raise it (or leave it unset to calibrate it), or raise "
            "burn_in."
        )
    if equi is not None and equi > 1 + HEAT_LIMIT:
        out.append(
            f"the chains are hotter than the local posterior: (w - w*)·∇U averages {equi:.2f} per moving weight, "
            f"exactly 1 at the target, so λ̂ is inflated by at least {equi - 1:.0%}. step_size (ε) is too large "
            f"(MALA acceptance {mala if mala is not None else float('nan'):.2f}): lower it (or leave it unset to "
            "calibrate it), or raise the batch size if the gradient noise τ is high."
        )
    if d.get("gradient_noise") is not None and d["gradient_noise"] > NOISE_LIMIT:
        out.append(
            f"minibatch gradient noise adds {d['gradient_noise']:.0%} to the injected noise (τ = ε·nβ²·Var(∇L_m)/4), "
            "which inflates λ̂ by about as much: lower step_size (ε) or raise the batch size."
        )
    if d.get("mala_acceptance") is not None and d["mala_acceptance"] < MALA_LIMIT:
        out.append(
            f"MALA acceptance {d['mala_acceptance']:.2f} is low (healthy ≈ 0.9): step_size (ε) is too large for "
            "this posterior and inflates λ̂. Lower it (or leave it unset to calibrate it)."
        )
    if r.calibration:
        out.extend(r.calibration.get("warnings", []))
    return out
