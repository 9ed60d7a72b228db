"""Results of an estimate: per chain, and combined over chains with diagnostics."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cluster.engine.config import SamplerConfig
from cluster.engine.diagnostics import effective_sample_size, split_rhat

SUCCEEDED, DIVERGED, FAILED = "succeeded", "diverged", "failed"


@dataclass
class ChainResult:
    """One chain. `loss_trace` holds the minibatch loss at each draw;
    `init_trace` the paired L(w*) on the same batches (paired mode only)."""

    chain: int
    seed: int
    llc: float
    status: str = SUCCEEDED
    loss_trace: list[float] = field(default_factory=list)
    init_trace: list[float] = field(default_factory=list)
    mala_acceptance: float | None = None
    frac_below_init: float | None = None
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

    @property
    def loss_traces(self) -> list[list[float]]:
        return [c.loss_trace for c in self.chains]

    @property
    def llc_sem(self) -> float:
        """Standard error of llc_mean (std over √chains that succeeded)."""
        n = sum(c.status == SUCCEEDED for c in self.chains)
        return self.llc_std / math.sqrt(n) if n > 1 else float("nan")

    @property
    def diverged_chains(self) -> list[int]:
        return [c.chain for c in self.chains if c.status == DIVERGED]

    def to_dict(self) -> dict[str, Any]:
        return {
            "llc_mean": self.llc_mean,
            "llc_std": self.llc_std,
            "llc_sem": self.llc_sem,
            "llc_per_chain": self.llc_per_chain,
            "init_loss": self.init_loss,
            "loss_traces": self.loss_traces,
            "diagnostics": self.diagnostics,
            "warnings": self.warnings,
            "chains": [c.to_dict() for c in self.chains],
            "config": self.config.to_dict(),
            "moving_elements": self.moving_elements,
        }

    @classmethod
    def from_chains(
        cls, chains: list[ChainResult], config: SamplerConfig, init_loss: float, moving_elements: int = 0
    ) -> "LLCResult":
        """Combine chains (possibly run on different workers) into one estimate."""
        chains = sorted(chains, key=lambda c: c.chain)
        ok = [c for c in chains if c.status == SUCCEEDED and math.isfinite(c.llc)]
        values = np.array([c.llc for c in ok])
        mean = float(values.mean()) if len(ok) else float("nan")
        std = float(values.std(ddof=1)) if len(ok) > 1 else float("nan")
        diagnostics: dict[str, Any] = {
            "rhat": None,
            "ess": None,
            "mala_acceptance": _nanmean([c.mala_acceptance for c in ok]),
            "frac_below_init": _nanmean([c.frac_below_init for c in ok]),
            "diverged_chains": [c.chain for c in chains if c.status == DIVERGED],
            "failed_chains": [c.chain for c in chains if c.status == FAILED],
        }
        lengths = {len(c.loss_trace) for c in ok}
        if ok and len(lengths) == 1 and lengths.pop() >= 4:
            traces = np.array([c.loss_trace for c in ok])
            if len(ok[0].init_trace) == traces.shape[1]:
                traces = traces - np.array([c.init_trace for c in ok])  # paired: the per-draw λ̂ signal
            diagnostics["rhat"] = split_rhat(traces)
            diagnostics["ess"] = effective_sample_size(traces)
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
        )
        result.warnings = _warnings(result)
        return result


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
    sem = r.llc_sem if math.isfinite(r.llc_sem) else 0.05 * abs(r.llc_mean)
    if r.moving_elements and math.isfinite(r.llc_mean) and r.llc_mean - 2 * sem > r.moving_elements / 2:
        out.append(
            f"LLC estimate {r.llc_mean:.4g} exceeds d/2 = {r.moving_elements / 2:g}, the largest value possible for "
            f"{r.moving_elements} moving weights: the chain is not sampling the local posterior (lower step_size)."
        )
    if d.get("frac_below_init") is not None and d["frac_below_init"] > 0.5:
        out.append(
            f"{d['frac_below_init']:.0%} of draws have loss below L(w*): w* is not a local minimum "
            "(or nβ·noise dominates); the estimate is unreliable."
        )
    if d.get("rhat") is not None and d["rhat"] > 1.1:
        out.append(
            f"split R-hat = {d['rhat']:.3f} > 1.1: the loss traces are not stationary or chains disagree. "
            "Add burn_in or draws, or lower step_size."
        )
    if d.get("mala_acceptance") is not None and d["mala_acceptance"] < 0.5:
        out.append(
            f"MALA acceptance {d['mala_acceptance']:.2f} is low (healthy ≈ 0.9): step_size is too large for this "
            "posterior; lower it."
        )
    return out
