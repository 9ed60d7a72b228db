"""Sampler settings, validated on construction.

Pure Python on purpose: the front end validates requests with this class
without importing torch.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from cluster.contract.errors import InvalidField

METHODS = ("sgld", "rmsprop_sgld")
DTYPES = ("float32", "bfloat16", "float16")
INIT_LOSS_MODES = ("auto", "full", "paired")
AUTO = "auto"  # a setting the product chooses (cluster.engine.calibrate, docs/calibration.md)


# A setting is out of range: the one domain error type, carrying its field (pure Python).
ConfigError = InvalidField


def _check(cond: bool, field: str, message: str) -> None:
    if not cond:
        raise ConfigError(field, message)


def _finite_positive(value: Any, field: str, upper: float | None = None) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if upper is not None:
        ok = ok and value <= upper
    rng = f"(0, {upper:g}]" if upper is not None else "(0, inf)"
    _check(ok, field, f"must be a finite number in {rng}, got {value!r}")


def _int_in(value: Any, field: str, lo: int, hi: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
    _check(ok, field, f"must be an integer in [{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class SamplerConfig:
    """Settings of localized SGLD and of the LLC estimate built on it.

    The chain targets p(w) ∝ exp(-nβ·L(w) - γ/2·||w - w*||²); each step is
    w ← w - (ε/2)·[nβ·∇L_m(w) + γ·(w - w*)] + N(0, ε), optionally
    RMSprop-preconditioned. λ̂ = nβ·(mean of L_m over draws - L(w*)).

    step_size, nbeta and burn_in default to "auto": nβ = n/log n of the sampling
    set, ε from pilot chains over a log grid, burn-in from the pilots' traces
    (cluster.engine.calibrate; docs/calibration.md). A number sets them by hand.
    """

    step_size: float | Literal["auto"] = AUTO  # ε
    nbeta: float | Literal["auto"] = AUTO  # nβ, the inverse temperature times n
    gamma: float = 1.0  # γ, localization strength (weak: a regular model's λ̂ is nβ·s/(nβ·s + γ)·d/2)
    method: Literal["sgld", "rmsprop_sgld"] = "sgld"
    chains: int = 4
    burn_in: int | Literal["auto"] = AUTO
    draws: int = 200
    steps_between_draws: int = 1
    seed: int = 0
    # L(w*): "full" averages over every batch of the sampling set (or the first
    # init_loss_batches), "paired" evaluates w* on each draw's own batch (the batch
    # noise cancels in λ̂); "auto" is paired. Every mode records the pairs for diagnostics.
    init_loss: Literal["auto", "full", "paired"] = "auto"
    init_loss_batches: int = 0  # 0: all batches
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # autocast dtype of forward/backward
    rmsprop_alpha: float = 0.99
    # a in 1/G = √V̂ + a. At a singular w* most directions have gradient ~0, so a small a makes G ≈ 1/a
    # there: a = 1e-5 threw every chain off a 10-5-10 deep linear network (docs/calibration.md).
    rmsprop_eps: float = 0.1
    mala: bool = True  # estimate the MALA acceptance probability of the proposals
    fetch_every: int = 50  # losses stay on the device and are fetched in blocks this long
    # pilot chains' steps in all, as a fraction of the main run's (chains × draws × steps_between_draws)
    calibration_budget: float = 1 / 3

    def __post_init__(self) -> None:
        _check(self.method in METHODS, "method", f"must be one of {METHODS}, got {self.method!r}")
        if self.step_size != AUTO:
            _finite_positive(self.step_size, "step_size", upper=1.0)
        if self.nbeta != AUTO:
            _finite_positive(self.nbeta, "nbeta", upper=1e12)
        ok = isinstance(self.gamma, (int, float)) and math.isfinite(self.gamma) and 0 <= self.gamma <= 1e12
        _check(ok, "gamma", f"must be a finite number in [0, 1e12], got {self.gamma!r}")
        _int_in(self.chains, "chains", 1, 4096)
        if self.burn_in != AUTO:
            _int_in(self.burn_in, "burn_in", 0, 10_000_000)
        _int_in(self.draws, "draws", 1, 10_000_000)
        _int_in(self.steps_between_draws, "steps_between_draws", 1, 100_000)
        _int_in(self.seed, "seed", 0, 2**63 - 1)
        _check(self.init_loss in INIT_LOSS_MODES, "init_loss", f"must be one of {INIT_LOSS_MODES}, got {self.init_loss!r}")
        _int_in(self.init_loss_batches, "init_loss_batches", 0, 10_000_000)
        _check(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        ok = isinstance(self.rmsprop_alpha, (int, float)) and 0 < self.rmsprop_alpha < 1
        _check(ok, "rmsprop_alpha", f"must be in (0, 1), got {self.rmsprop_alpha!r}")
        _finite_positive(self.rmsprop_eps, "rmsprop_eps", upper=1.0)
        _check(isinstance(self.mala, bool), "mala", f"must be true or false, got {self.mala!r}")
        _int_in(self.fetch_every, "fetch_every", 1, 1_000_000)
        _finite_positive(self.calibration_budget, "calibration_budget", upper=10.0)
        total = self.total_steps
        _check(total <= 100_000_000, "draws", f"burn_in + draws*steps_between_draws = {total} steps is more than 1e8; lower draws")

    @property
    def total_steps(self) -> int:
        return self._burn_in + self.draws * self.steps_between_draws

    @property
    def _burn_in(self) -> int:
        return 0 if self.burn_in == AUTO else self.burn_in

    @property
    def auto_fields(self) -> list[str]:
        """The settings left for the product to choose."""
        return [f for f in ("step_size", "nbeta", "burn_in") if getattr(self, f) == AUTO]

    def draw_steps(self) -> range:
        """Indices of the steps whose losses are the draws."""
        start = self._burn_in + self.steps_between_draws - 1
        return range(start, self.total_steps, self.steps_between_draws)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SamplerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown sampler setting; allowed: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "SamplerConfig":
        return dataclasses.replace(self, **changes)
