"""Convergence diagnostics of an estimate's draws.

Input traces are arrays [chains, draws] of the per-draw λ̂ signal, ideally the
paired difference nβ·(L_m(w_t) - L_m(w*)) on the same batch: raw minibatch losses
carry batch-to-batch noise (nβ·sd(L_m) can be 10x λ) that hides any drift, so
diagnostics on them read healthy whatever ε is.

R̂ and ESS are the rank-normalised split-R̂ and bulk/tail ESS of Vehtari et al.
(2021), computed by arviz-stats (imported on first use: it pulls in scipy).
"""
from __future__ import annotations

import math

import numpy as np


def _stats():
    from arviz_stats.base import array_stats  # scipy: ~1 s to import, only when diagnostics are computed

    return array_stats


def _check(traces: np.ndarray) -> np.ndarray:
    traces = np.asarray(traces, dtype=np.float64)
    if traces.ndim != 2:
        raise ValueError(f"traces must be [chains, draws], got shape {traces.shape}")
    if traces.shape[1] < 4:
        raise ValueError(f"need at least 4 draws per chain for split diagnostics, got {traces.shape[1]}")
    return traces


def split_rhat(traces: np.ndarray) -> float:
    """Rank-normalised split-R̂: ≈ 1 when the chains agree and are stationary."""
    value = float(_stats().rhat(_check(traces), chain_axis=0, draw_axis=1, method="rank"))
    return value if math.isfinite(value) else 1.0  # constant traces (e.g. nothing moved)


def effective_sample_size(traces: np.ndarray, method: str = "bulk") -> float:
    """Effective number of independent draws over all chains: "bulk" (the centre) or "tail" (5%/95% quantiles)."""
    kwargs = {"prob": (0.05, 0.95)} if method == "tail" else {}
    value = float(_stats().ess(_check(traces), chain_axis=0, draw_axis=1, method=method, **kwargs))
    return value if math.isfinite(value) else float(np.size(traces))


def block_means(traces: np.ndarray, blocks: int = 20) -> np.ndarray:
    """Means of `blocks` consecutive blocks of each chain (a ragged tail is dropped): the
    batch-to-batch noise of raw losses shrinks by √(block length), the drift stays."""
    traces = np.asarray(traces, dtype=np.float64)
    size = max(1, traces.shape[1] // blocks)
    kept = (traces.shape[1] // size) * size
    return traces[:, :kept].reshape(traces.shape[0], -1, size).mean(axis=2)


def half_trend(traces: np.ndarray) -> float:
    """t statistic of (second-half mean - first-half mean) of each chain, pooled over chains.

    Each half mean's variance is its sample variance over its own ESS, so the
    autocorrelation of the draws is accounted for. A chain still climbing to its
    stationary level (ε too small for the steps, or too little burn-in) reads t ≫ 0;
    a stationary one |t| ≲ 2.
    """
    traces = _check(traces)
    half = traces.shape[1] // 2
    first, second = traces[:, :half], traces[:, -half:]
    diff = float(np.mean(second.mean(axis=1) - first.mean(axis=1)))
    var = 0.0
    for part in (first, second):
        for row in part:
            ess = float(_stats().ess(row[None, :], chain_axis=0, draw_axis=1, method="mean"))
            ess = min(max(ess, 1.0), row.size) if math.isfinite(ess) else row.size
            var += row.var(ddof=1) / ess
    var /= traces.shape[0] ** 2
    if var <= 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / math.sqrt(var)


def mean_interval(chain_values: np.ndarray, traces: np.ndarray | None, level: float = 0.95) -> tuple[float, float]:
    """Half-width of the interval of the mean over chains, and the standard error behind it.

    Two error sources, the larger wins: the spread over C chains, with Student's t at
    C - 1 degrees of freedom (few chains make a 2·sem interval too narrow), and the
    Monte Carlo error of the pooled draws, sd/√ESS (autocorrelated draws are fewer
    than they look). `traces` are the draws whose mean per chain is `chain_values`.
    """
    from scipy import stats

    values = np.asarray(chain_values, dtype=np.float64)
    c = values.size
    half, sem = 0.0, 0.0
    if c > 1:
        sem = float(values.std(ddof=1) / math.sqrt(c))
        half = float(stats.t.ppf(0.5 + level / 2, c - 1)) * sem
    if traces is not None and np.asarray(traces).shape[1] >= 4:
        mcse = float(np.std(traces, ddof=1) / math.sqrt(effective_sample_size(traces)))
        if float(stats.norm.ppf(0.5 + level / 2)) * mcse > half:
            half, sem = float(stats.norm.ppf(0.5 + level / 2)) * mcse, max(sem, mcse)
    return (half if c > 1 or traces is not None else math.nan), sem


def mser_truncation(signal: np.ndarray, block: int | None = None) -> int:
    """MSER: the number of leading steps whose removal minimises the squared standard
    error of the remaining mean, var(x[d:]) / (n - d), searched over the first half, in blocks."""
    x = np.asarray(signal, dtype=np.float64)
    block = block or max(1, x.size // 50)
    means = x[: (x.size // block) * block].reshape(-1, block).mean(axis=1)
    if means.size < 4:
        return 0
    scores = [means[d:].var() / (means.size - d) for d in range(means.size // 2)]
    return int(np.argmin(scores)) * block
