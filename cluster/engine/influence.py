"""Bayesian influence functions and susceptibilities from recorded observable losses.

Pure numpy (no torch): the driver, the SDK side of an artifact and tests use them
on the losses that `cluster.engine.observables` records.

Layout of recorded losses: an array of shape (chains, draws, examples) for
per-sequence losses, or (chains, draws, examples, tokens) for per-token losses.

BIF (Kreer et al. 2025), as devinterp 2.0.1 `compute_bif` defines it: the Pearson
correlation (or, with `covariance=True`, the covariance, ddof 1) over posterior draws
of two examples' losses. Chains are pooled by stacking (chain, draw) into one sample
axis ("stack", devinterp's default and recommendation) or by averaging over chains
first ("mean"). Per sequence: token losses are first averaged over the sequence.
Per token: for examples i and j, the (tokens × tokens) matrix of correlations between
token t of i and token s of j (optionally averaged to one number per pair).

Susceptibilities (Baker et al. 2025, arXiv 2504.18274): the response of the
restricted posterior's expectation of φ_C = L_s(w) - L_s(w*) (the sampling task's
loss, only the weights of restriction C moving) to shifting the data distribution
toward an observable's examples; by the fluctuation-dissipation theorem it is the
posterior covariance

    χ_C(x) = -Cov_C[φ_C, ℓ_x(w) - L_s(w)]

per example (or token) x, with the covariance over the draws of restriction C's own
run (pooled over chains). devinterp 2.0.1 `compute_susceptibilities` computes
E_C[φ·(L_s - ℓ_x)] - E_C[φ]·(E_full[L_s] - E_full[ℓ_x]): it centres the loss shift
with the *unrestricted* ("full") run's mean instead of the restricted run's own, which
is the covariance only when both runs have the same mean loss shift. We follow the
paper's covariance by default (`centering="restricted"`) and reproduce devinterp's
estimator exactly with `centering="full"` (used by the agreement tests).
"""
from __future__ import annotations

from typing import Literal, Mapping

import numpy as np

Pooling = Literal["stack", "mean"]
Granularity = Literal["sequence", "token"]


def _as_samples(losses: np.ndarray, granularity: Granularity, pooling: Pooling) -> np.ndarray:
    """(chains, draws, examples[, tokens]) → (samples, examples[, tokens]) in float64."""
    x = np.asarray(losses, dtype=np.float64)
    if x.ndim not in (3, 4):
        raise ValueError(f"losses must have shape (chains, draws, examples[, tokens]), got {x.shape}")
    if granularity == "sequence":
        if x.ndim == 4:
            x = x.mean(axis=-1)
    elif granularity == "token":
        if x.ndim != 4:
            raise ValueError("a per-token BIF needs per-token losses (chains, draws, examples, tokens)")
    else:
        raise ValueError(f"granularity must be 'sequence' or 'token', got {granularity!r}")
    if pooling == "stack":
        x = x.reshape(-1, *x.shape[2:])
    elif pooling == "mean":
        x = x.mean(axis=0)
    else:
        raise ValueError(f"pooling must be 'stack' or 'mean', got {pooling!r}")
    if x.shape[0] < 2:
        raise ValueError(f"a BIF needs at least 2 draws after pooling, got {x.shape[0]}")
    return x


def bif(losses_a: np.ndarray, losses_b: np.ndarray | None = None, *, granularity: Granularity = "sequence",
        pooling: Pooling = "stack", covariance: bool = False, average_tokens: bool = False) -> np.ndarray:
    """Bayesian influence between the examples of `losses_a` and those of `losses_b` (default: a with a).

    Returns (examples_a, examples_b) per sequence, (examples_a, examples_b, tokens, tokens)
    per token, or (examples_a, examples_b) per token with `average_tokens`.
    Both arrays must come from the same chains and draws (same first two axes).
    """
    a = _as_samples(losses_a, granularity, pooling)
    b = a if losses_b is None else _as_samples(losses_b, granularity, pooling)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"both operands need the same draws: {a.shape[0]} vs {b.shape[0]} samples")
    n = a.shape[0]
    ac = a - a.mean(axis=0)
    bc = b - b.mean(axis=0)
    if granularity == "sequence":
        cov = ac.T @ bc / (n - 1)
        if covariance:
            return cov
        sa = np.sqrt((ac * ac).sum(axis=0) / (n - 1))
        sb = np.sqrt((bc * bc).sum(axis=0) / (n - 1))
        return cov / np.outer(sa, sb)
    cov = np.einsum("kit,kjs->ijts", ac, bc, optimize=True) / (n - 1)
    if not covariance:
        sa = np.sqrt((ac * ac).sum(axis=0) / (n - 1))  # (examples_a, tokens)
        sb = np.sqrt((bc * bc).sum(axis=0) / (n - 1))
        cov = cov / (sa[:, None, :, None] * sb[None, :, None, :])
    return cov.mean(axis=(-2, -1)) if average_tokens else cov


def bif_stderr(losses_a: np.ndarray, losses_b: np.ndarray | None = None, **kwargs) -> np.ndarray:
    """Standard error of `bif` from its spread over chains (each chain's own BIF): sd / √chains.

    Honest about autocorrelation within a chain (each chain is one estimate); needs ≥ 2 chains."""
    a = np.asarray(losses_a)
    b = a if losses_b is None else np.asarray(losses_b)
    if a.shape[0] < 2:
        raise ValueError("a standard error over chains needs at least 2 chains")
    kwargs = {**kwargs, "pooling": "stack"}
    per = np.stack([bif(a[c:c + 1], b[c:c + 1], **kwargs) for c in range(a.shape[0])])
    return per.std(axis=0, ddof=1) / np.sqrt(a.shape[0])


def susceptibilities(restricted: Mapping[str, np.ndarray], sampling_task: str, *,
                     full: Mapping[str, np.ndarray] | None = None, init_loss: float | None = None,
                     centering: Literal["restricted", "full"] = "restricted",
                     observables: list[str] | None = None) -> dict[str, np.ndarray]:
    """Per-example (or per-token) susceptibilities of one weight restriction C.

    Args:
        restricted: observable name → losses (chains, draws, examples[, tokens]) recorded on
            restriction C's run; must include `sampling_task`.
        sampling_task: the observable holding examples of the sampling distribution; φ_C per
            draw is their mean loss minus L(w*).
        full: the same observables recorded on the unrestricted run (needed for
            centering="full", i.e. devinterp's estimator).
        init_loss: L(w*) of φ_C (devinterp: the full run's mean init loss). Any constant gives
            the same covariance; it matters only for centering="full".
        centering: "restricted" (the paper's covariance, default) or "full" (devinterp 2.0.1).
        observables: which observables to return (default every one but `sampling_task`).

    Returns: observable name → χ of shape (examples[, tokens]) (token-wise contributions:
    sum or average them for a dataset-level susceptibility).
    """
    if sampling_task not in restricted:
        raise ValueError(f"sampling_task {sampling_task!r} is not among the observables {sorted(restricted)}")
    names = observables if observables is not None else [k for k in restricted if k != sampling_task]
    pt = np.asarray(restricted[sampling_task], dtype=np.float64)
    pt_mean = pt.reshape(pt.shape[0], pt.shape[1], -1).mean(axis=-1)  # (chains, draws)
    phi = pt_mean - (init_loss if init_loss is not None else 0.0)
    out: dict[str, np.ndarray] = {}
    if centering == "restricted":
        phi_c = phi - phi.mean()
        for name in names:
            probe = np.asarray(restricted[name], dtype=np.float64)
            shift = pt_mean.reshape(pt_mean.shape + (1,) * (probe.ndim - 2)) - probe  # L_s - ℓ_x
            shift_c = shift - shift.mean(axis=(0, 1))
            # -Cov[φ, ℓ_x - L_s] = Cov[φ, L_s - ℓ_x], population (1/N) covariance as devinterp's means
            out[name] = np.einsum("cd,cd...->...", phi_c, shift_c) / phi.size
        return out
    if centering != "full":
        raise ValueError(f"centering must be 'restricted' or 'full', got {centering!r}")
    if full is None or init_loss is None:
        raise ValueError("centering='full' (devinterp's estimator) needs the full run's losses and init_loss")
    full_pt_mean = float(np.asarray(full[sampling_task], dtype=np.float64).mean())
    e_phi = float(phi.mean())
    e_phi_pt = float((phi * pt_mean).mean())
    for name in names:
        probe = np.asarray(restricted[name], dtype=np.float64)
        e_phi_probe = np.einsum("cd,cd...->...", phi, probe) / phi.size
        full_delta = full_pt_mean - np.asarray(full[name], dtype=np.float64).mean(axis=(0, 1))
        out[name] = e_phi_pt - e_phi_probe - e_phi * full_delta
    return out
