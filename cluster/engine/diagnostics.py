"""Convergence diagnostics of loss traces: split-R̂ and effective sample size.

Both follow Gelman et al., Bayesian Data Analysis (3rd ed.), §11.4-11.5: chains
are split in halves; ESS sums autocorrelations with Geyer's initial monotone
sequence. Input: an array [chains, draws]; NaN-free.
"""
from __future__ import annotations

import numpy as np


def _split(traces: np.ndarray) -> np.ndarray:
    traces = np.asarray(traces, dtype=np.float64)
    if traces.ndim != 2:
        raise ValueError(f"traces must be [chains, draws], got shape {traces.shape}")
    half = traces.shape[1] // 2
    if half < 2:
        raise ValueError(f"need at least 4 draws per chain for split diagnostics, got {traces.shape[1]}")
    return np.concatenate([traces[:, :half], traces[:, -half:]], axis=0)


def split_rhat(traces: np.ndarray) -> float:
    """Potential scale reduction; ≈1 when chains agree, > 1.1 means not mixed."""
    x = _split(traces)
    m, n = x.shape
    means = x.mean(axis=1)
    within = x.var(axis=1, ddof=1).mean()
    between = n * means.var(ddof=1)
    if within == 0:
        return 1.0 if between == 0 else float("inf")
    var_plus = (n - 1) / n * within + between / n
    return float(np.sqrt(var_plus / within))


def _autocovariance(x: np.ndarray) -> np.ndarray:
    """Autocovariance of each row at every lag, by FFT."""
    n = x.shape[1]
    centred = x - x.mean(axis=1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(centred, n=size, axis=1)
    acov = np.fft.irfft(f * np.conjugate(f), n=size, axis=1)[:, :n]
    return acov / n


def effective_sample_size(traces: np.ndarray) -> float:
    """Effective number of independent draws over all chains."""
    x = _split(traces)
    m, n = x.shape
    acov = _autocovariance(x)
    chain_var = acov[:, 0] * n / (n - 1)
    within = chain_var.mean()
    var_plus = within * (n - 1) / n + (x.mean(axis=1).var(ddof=1) if m > 1 else 0.0)
    if var_plus <= 0:
        return float(m * n)
    rho = 1.0 - (within - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    # Geyer: sum pairs ρ(2t)+ρ(2t+1) while positive, made monotone non-increasing.
    pairs = rho[: (n // 2) * 2].reshape(-1, 2).sum(axis=1)
    positive = np.flatnonzero(pairs <= 0)
    pairs = pairs[: positive[0]] if positive.size else pairs
    pairs = np.minimum.accumulate(pairs)
    tau = -1.0 + 2.0 * pairs.sum()
    tau = max(tau, 1.0 / np.log10(m * n + 10))  # antithetic chains cannot beat this bound
    return float(m * n / tau)
