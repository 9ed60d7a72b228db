"""The estimator reproduces known learning coefficients (fast, CPU).

Each case states its truth two ways where it can: the exact expectation the chain
should reach at this finite nβ (Gaussian algebra or numerical quadrature), which
the estimate must match within its stated uncertainty (3 standard errors over
chains, plus the stated discretisation allowance where there is one), and the
asymptotic λ of singular learning theory, which it must match within a stated
relative tolerance. Each test also checks that a wrong truth would be rejected,
so it can fail.

Potentials such as K(w) = w⁴ are run as C independent copies in one parameter
tensor: λ adds over disjoint blocks of variables, so λ(ΣK(w_c)) = C·λ(K) and the
per-copy estimate is λ̂/C. That gives C·chains samplers for the cost of one chain.
"""
import math

import numpy as np
import pytest
import torch

from cluster.contract.sampler import SamplerConfig

from cluster.engine.estimate import estimate_llc
from testbeds.dln import ShuffledBatches, dln_loss, make_dln, make_dln_data
from testbeds.theory import deep_linear_network, normal_crossing, reduced_rank_regression, regular

# Many identical "batches" per pass: the potentials below take no data, and a
# pass over the sampling set has a fixed cost in the engine (re-seeding the order).
NO_DATA = [None] * 500


def within(result, truth: float, *, scale: float = 1.0, sems: float = 3.0, allowance: float = 0.0) -> bool:
    """|λ̂ - truth| ≤ sems·sem + allowance·truth (λ̂ and sem divided by `scale`)."""
    sem = result.llc_sem / scale
    assert math.isfinite(sem) and sem > 0, result.warnings
    return abs(result.llc_mean / scale - truth) <= sems * sem + allowance * abs(truth)


def assert_healthy(result) -> None:
    assert not result.diagnostics["diverged_chains"], result.warnings
    assert result.diagnostics["mala_acceptance"] > 0.8, result.diagnostics


class Copies(torch.nn.Module):
    """C independent copies of a potential's variables, all at w* = 0."""

    def __init__(self, copies: int, dim: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(copies, dim))


# --- (a) a regular model: λ = d/2 -------------------------------------------------


def test_regular_linear_regression_gives_half_the_dimension():
    """y = Wx + noise with W a 16×10 matrix (d = 160), W* the least-squares fit on
    the sampling set.

    The loss over the set is exactly quadratic around W*: each output row adds
    ½·δᵀΣδ with Σ = XᵀX/n, so the full-batch chain is a Gaussian autoregression
    whose stationary variance along an eigenvalue s of Σ is 1/(a(1 - εa/4)),
    a = nβ·s + γ: the expectation of nβ·(L - L(W*)) is known exactly, discretisation
    included."""
    d_in, d_out, n, nbeta, gamma, eps = 10, 16, 1000, 1000.0, 1.0, 5e-5
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d_in, d_out, generator=g, dtype=torch.float64) + 0.5 * torch.randn(n, d_out, generator=g,
                                                                                           dtype=torch.float64)
    w_star = torch.linalg.lstsq(x, y).solution  # [d_in, d_out]
    model = torch.nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        model.weight.copy_(w_star.T.float())
    batch = (x.float(), y.float())

    def loss(m, b):
        xb, yb = b
        return 0.5 * ((m(xb) - yb) ** 2).sum(dim=1).mean()

    config = SamplerConfig(step_size=eps, nbeta=nbeta, gamma=gamma, chains=4, burn_in=200, draws=1000, seed=1)
    result = estimate_llc(model, loss, [batch] * 50, config)
    assert_healthy(result)

    d = d_in * d_out
    s = torch.linalg.eigvalsh(x.T @ x / n).numpy()
    a = nbeta * s + gamma
    exact_chain = d_out * float(np.sum(nbeta * s / (a * (1 - eps * a / 4))) / 2)
    exact_posterior = d_out * float(np.sum(nbeta * s / a) / 2)
    assert exact_chain == pytest.approx(exact_posterior, rel=0.02)  # the discretisation is small here
    assert exact_posterior == pytest.approx(regular(d), rel=0.01)
    assert within(result, exact_chain), (result.llc_mean, result.llc_sem, exact_chain)
    assert result.llc_mean == pytest.approx(regular(d), rel=0.05)
    assert not within(result, regular(d + d_in)), "the estimate cannot tell 16 outputs from 17"


# --- (b) singular potentials: K = w⁴ and K = w1²·w2⁴ ------------------------------


def chain_law_expectation(grad_u, f, eps: float, half_width: float, points: int = 1501) -> float:
    """E[f] under the exact stationary law of the 1-D chain w' = w - (ε/2)·U'(w) + √ε·ξ,
    by discretising its Gaussian transition kernel on a grid and solving πK = π."""
    w = np.linspace(-half_width, half_width, points)
    mean = w - eps / 2 * grad_u(w)
    kernel = np.exp(-((w[None, :] - mean[:, None]) ** 2) / (2 * eps))
    kernel /= kernel.sum(axis=1, keepdims=True)
    system = kernel.T - np.eye(points)
    system[-1, :] = 1.0  # replace one (redundant) balance equation by Σπ = 1
    rhs = np.zeros(points)
    rhs[-1] = 1.0
    pi = np.linalg.solve(system, rhs)
    return float(pi @ f(w))


def quartic_posterior_expectation(nbeta: float, gamma: float) -> float:
    """E[nβ·w⁴] under p(w) ∝ exp(-nβw⁴ - γw²/2), by quadrature on a fine grid."""
    w = np.linspace(-1.0, 1.0, 400_001)
    p = np.exp(-nbeta * w**4 - gamma * w**2 / 2)
    return float(np.sum(nbeta * w**4 * p) / np.sum(p))


def test_quartic_potential_gives_one_quarter():
    copies, nbeta, gamma, eps = 64, 1e4, 1.0, 3e-4
    model = Copies(copies, 1)
    config = SamplerConfig(step_size=eps, nbeta=nbeta, gamma=gamma, chains=4, burn_in=200, draws=1800, seed=2)
    result = estimate_llc(model, lambda m, _: (m.w**4).sum(), NO_DATA, config)
    assert_healthy(result)

    exact_chain = chain_law_expectation(lambda w: 4 * nbeta * w**3 + gamma * w, lambda w: nbeta * w**4, eps, 0.6)
    exact_posterior = quartic_posterior_expectation(nbeta, gamma)
    # the chain's own law differs from the posterior by O(ε): here about 3%
    assert exact_chain == pytest.approx(exact_posterior, rel=0.05)
    assert exact_posterior == pytest.approx(normal_crossing([2]), rel=0.01)
    assert within(result, exact_chain, scale=copies), (result.llc_mean / copies, result.llc_sem / copies, exact_chain)
    assert result.llc_mean / copies == pytest.approx(normal_crossing([2]), rel=0.05)
    assert not within(result, normal_crossing([3]), scale=copies, allowance=0.05), "cannot tell w⁴ from w⁶"


def normal_crossing_posterior_expectation(nbeta: float, gamma: float) -> float:
    """E[nβ·w1²w2⁴] under p ∝ exp(-nβw1²w2⁴ - γ|w|²/2). Given w2, w1 is Gaussian with
    precision a = 2nβw2⁴ + γ, so E[w1²|w2] = 1/a and w1 integrates out to √(2π/a):
    a 1-D integral over w2, done on a grid fine near 0 and geometric beyond."""
    w2 = np.concatenate([np.linspace(0.0, 1e-3, 20_001)[:-1], np.geomspace(1e-3, 12 / math.sqrt(gamma), 200_001)])
    a = 2 * nbeta * w2**4 + gamma
    weight = np.sqrt(2 * math.pi / a) * np.exp(-gamma * w2**2 / 2)
    return float(np.trapezoid(nbeta * w2**4 / a * weight, w2) / np.trapezoid(weight, w2))


def test_normal_crossing_gives_the_steeper_factor():
    """K = w1²·w2⁴: λ = min(1/2, 1/4) = 1/4. The finite-nβ posterior sits below it
    (w1 spreads to the scale 1/√γ along the w2 = 0 valley), so the estimate is held to
    the quadrature value within 3 sem + 5% (discretisation) and to 1/4 within 15%."""
    copies, nbeta, gamma, eps = 128, 1e4, 1.0, 2e-4
    model = Copies(copies, 2)
    config = SamplerConfig(step_size=eps, nbeta=nbeta, gamma=gamma, chains=4, burn_in=500, draws=2000, seed=3)
    result = estimate_llc(model, lambda m, _: (m.w[:, 0] ** 2 * m.w[:, 1] ** 4).sum(), NO_DATA, config)
    assert_healthy(result)

    exact = normal_crossing_posterior_expectation(nbeta, gamma)
    truth = normal_crossing([1, 2])
    assert exact == pytest.approx(truth, rel=0.1)
    assert within(result, exact, scale=copies, allowance=0.05), (result.llc_mean / copies, result.llc_sem / copies, exact)
    assert result.llc_mean / copies == pytest.approx(truth, rel=0.15)
    assert not within(result, normal_crossing([1, 1]), scale=copies, allowance=0.15), "cannot tell w1²w2⁴ from w1²w2²"


# --- (c, d) reduced-rank regression and deep linear networks ----------------------
# The setup of bench/theory_table.py, shortened: w* keeps an r×r orthogonal block in
# the corner of every layer (the most singular true parameter), n = 10,000 noiseless
# examples x ~ U[-10, 10], batches of 500, nβ = n/log n, γ = 1. The chain starts at w*
# and λ̂ depends on how far it has diffused (ε·T): these nets are small enough that ε·T
# between 0.01 and 0.02 sits on λ (see bench/README.md), so the draws are steps
# T/2..T at ε = 1e-5, T = 2000. Tolerance: 15% of λ, or 3 sem if that is wider.
DLN_N, DLN_BATCH, DLN_TOLERANCE = 10_000, 500, 0.15


def dln_estimate(widths, rank, *, step_size=1e-5, steps=2000, chains=4, seed=0):
    model = make_dln(widths, rank, seed=seed)
    x, y = make_dln_data(model, DLN_N, seed=seed)
    batches = [(x[i:i + DLN_BATCH], y[i:i + DLN_BATCH]) for i in range(0, DLN_N, DLN_BATCH)]
    config = SamplerConfig(step_size=step_size, nbeta=DLN_N / math.log(DLN_N), gamma=1.0, chains=chains,
                           burn_in=steps // 2, draws=steps - steps // 2, seed=seed)
    return estimate_llc(model, dln_loss, batches, config)


def dln_agrees(result, truth: float) -> bool:
    return abs(result.llc_mean - truth) <= max(DLN_TOLERANCE * truth, 3 * result.llc_sem)


def test_reduced_rank_regression():
    """The first row of bench/theory_table.py: y = BAx with A: 10→5, B: 5→10 at true
    rank 2, λ = 29 (Aoyagi & Watanabe). ε = 1e-5, T = 2000, batch 100 reshuffled every
    pass, draws = the last 10% of steps; recorded there as 29.9 ± 1.0 over 4 chains."""
    widths, rank = (10, 5, 10), 2
    truth = reduced_rank_regression(*widths, rank)
    model = make_dln(widths, rank, seed=0)
    x, y = make_dln_data(model, DLN_N, seed=0)
    config = SamplerConfig(step_size=1e-5, nbeta=DLN_N / math.log(DLN_N), gamma=1.0, chains=4, burn_in=1800, draws=200,
                           seed=0, init_loss="full", fetch_every=500)
    result = estimate_llc(model, dln_loss, ShuffledBatches(x, y, 100), config)
    assert not result.diagnostics["diverged_chains"], result.warnings
    assert dln_agrees(result, truth), (result.llc_mean, result.llc_sem, truth)
    assert not dln_agrees(result, regular(100)), "the estimate does not see the singularity (λ = d/2)"
    assert not dln_agrees(result, reduced_rank_regression(*widths, 0)), "cannot tell rank 2 (λ = 29) from rank 0 (λ = 22)"


@pytest.mark.parametrize(
    "widths,rank",
    [
        pytest.param((8, 6, 6, 8), 2, id="dln-8-6-6-8-r2"),
        pytest.param((6, 8, 8, 6), 2, id="dln-6-8-8-6-r2"),
    ],
)
def test_deep_linear_network(widths, rank):
    truth = deep_linear_network(widths, rank)
    result = dln_estimate(widths, rank)
    assert not result.diagnostics["diverged_chains"], result.warnings
    assert dln_agrees(result, truth), (result.llc_mean, result.llc_sem, truth)
    d = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    assert not dln_agrees(result, regular(d)), "the estimate does not see the singularity (λ = d/2)"


def test_too_large_step_on_a_deep_network_is_reported_not_returned():
    """ε far beyond the stable range: chains blow up, and the engine must say so
    (diverged chains, no mean) rather than return a huge number."""
    result = dln_estimate((6, 8, 8, 6), 2, step_size=5e-3, steps=200, chains=2)
    assert result.diagnostics["diverged_chains"] == [0, 1]
    assert math.isnan(result.llc_mean)
    assert any("diverged" in w for w in result.warnings)


@pytest.mark.slow
@pytest.mark.parametrize(
    "widths,rank,draws",
    [
        pytest.param((10, 5, 10), 2, 2000, id="rrr-10-5-10-r2"),
        pytest.param((8, 6, 6, 8), 2, 2000, id="dln-8-6-6-8-r2"),
    ],
)
def test_deep_linear_network_with_everything_automatic(widths, rank, draws):
    """The fast subset of `bench/theory_table.py --auto`: ε, nβ and burn-in chosen by the product
    (pilots, n/log n, MSER), batches of 100 reshuffled every pass; within 15% of Aoyagi's λ."""
    truth = deep_linear_network(widths, rank)
    model = make_dln(widths, rank, seed=0)
    x, y = make_dln_data(model, DLN_N, seed=0)
    config = SamplerConfig(method="sgld", gamma=1.0, chains=4, draws=draws, seed=0, fetch_every=500)
    result = estimate_llc(model, dln_loss, ShuffledBatches(x, y, 100), config)
    assert result.config.nbeta == pytest.approx(DLN_N / math.log(DLN_N))
    assert abs(result.llc_mean - truth) <= DLN_TOLERANCE * truth, (result.llc_mean, truth, result.calibration["pilots"])
    assert result.calibration["cost"]["fraction"] <= 1 / 3 + 0.01
    assert not result.diagnostics["diverged_chains"], result.warnings


def test_a_singular_model_at_a_good_step_reads_low_equipartition_without_a_false_alarm():
    """The DLN 10-20-20-10 (λ = 50) at the theory table's hand-tuned ε = 3e-6: λ̂ within 10% while
    equipartition reads ≈ 0.2, because the flat directions (held by γ alone) spread on the scale
    1/(εγ) ≫ the run. The "have not spread" warning fired on this before; it now also needs MALA ≥ 0.95
    (here ≈ 0.8: ε has no room to grow), and no heat warning fires either (equipartition < 1)."""
    widths, rank = (10, 20, 20, 10), 5
    model = make_dln(widths, rank, seed=0)
    x, y = make_dln_data(model, DLN_N, seed=0)
    config = SamplerConfig(step_size=3e-6, nbeta=DLN_N / math.log(DLN_N), gamma=1.0, chains=2, burn_in=2000,
                           draws=500, fetch_every=500)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # an 800-weight model: more threads only oversubscribe a loaded machine
    try:
        result = estimate_llc(model, dln_loss, ShuffledBatches(x, y, 100), config)
    finally:
        torch.set_num_threads(threads)
    assert result.diagnostics["equipartition"] < 0.5, result.diagnostics
    assert abs(result.llc_mean - deep_linear_network(widths, rank)) <= 0.10 * 50, result.llc_mean
    assert not any("spread" in w or "hotter" in w for w in result.warnings), result.warnings
