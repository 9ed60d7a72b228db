"""Diagnostics that can fail: the λ̂ signal they read, the interval, and false alarms or
silent errors found in review (each case failed on the engine before the fix). Fast, CPU."""
import math

import numpy as np
import pytest
import torch

from cluster.contract.sampler import SamplerConfig

from cluster.engine.estimate import estimate_llc
from cluster.engine.diagnostics import half_trend, mean_interval, split_rhat
from cluster.engine.result import ChainResult, LLCResult
from cluster.engine.sgld import SGLD


def _noisy_regression(n=4096, d=4, noise=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, 1, generator=g) + noise * torch.randn(n, 1, generator=g)
    model = torch.nn.Linear(d, 1)
    with torch.no_grad():  # w* = the least-squares fit
        sol = torch.linalg.lstsq(torch.cat([x, torch.ones(n, 1)], 1), y).solution
        model.weight.copy_(sol[:d].T)
        model.bias.copy_(sol[d])
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, n, 64)]
    return model, batches


def mse(model, batch):
    x, y = batch
    return 0.5 * ((model(x) - y) ** 2).mean()


@pytest.mark.parametrize("init_loss", ["full", "paired"])
def test_small_restriction_at_realistic_nbeta_is_not_called_diverged(init_loss):
    """One moving weight, nβ = n/log n: the old blow-up limit 100·max(d/2, 1)/nβ = 0.12 sat
    below the batch-to-batch sd of L_m (≈ 0.35 here) and every chain was 'diverged' at once."""
    model, batches = _noisy_regression()
    nbeta = 4096 / math.log(4096)
    config = SamplerConfig(step_size=1e-4, nbeta=nbeta, gamma=100.0, chains=2, draws=100, burn_in=20, fetch_every=20,
                           init_loss=init_loss)
    result = estimate_llc(model, mse, batches, config, params={"bias": None})
    assert result.diagnostics["diverged_chains"] == [], result.warnings
    assert result.moving_elements == 1 and math.isfinite(result.llc_mean)


def test_a_real_blow_up_of_a_small_restriction_is_still_caught():
    model, batches = _noisy_regression()
    config = SamplerConfig(step_size=0.5, nbeta=1e4, gamma=1.0, chains=2, draws=100, fetch_every=20)
    result = estimate_llc(model, mse, batches, config, params={"bias": None})
    assert result.diagnostics["diverged_chains"] == [0, 1]


def test_rmsprop_mala_includes_the_log_determinant_of_the_preconditioner():
    """log α of one RMSprop-SGLD proposal against the exact Gaussian-proposal formula on a
    quadratic (where the trapezoid energy difference is exact); leaving out ½·Σ log(G/G')
    is off by 0.11 here."""
    a = torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    nbeta, gamma, eps, alpha, reg = 2.0, 1.0, 0.05, 0.9, 1e-3
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = SGLD([w], lr=eps, nbeta=nbeta, gamma=gamma, preconditioner="rmsprop", alpha=alpha, eps=reg,
               generator=torch.Generator().manual_seed(0), track_mala=True)

    def loss(v):
        return 0.5 * (a * (v - c) ** 2).sum()

    ws, grads = [w.detach().clone()], []
    for _ in range(2):
        opt.zero_grad()
        loss(w).backward()
        grads.append(w.grad.detach().clone())
        opt.step()
        ws.append(w.detach().clone())
    w0, w1 = ws[0], ws[1]

    def energy(v):
        return nbeta * loss(v) + gamma / 2 * ((v - w0) ** 2).sum()

    def grad_energy(v, g):
        return nbeta * g + gamma * (v - w0)

    v1 = (1 - alpha) * grads[0] ** 2
    g0 = 1 / (torch.sqrt(v1 / (1 - alpha)) + reg)
    v2 = alpha * v1 + (1 - alpha) * grads[1] ** 2
    g1 = 1 / (torch.sqrt(v2 / (1 - alpha**2)) + reg)

    def log_q(to, frm, grad, g):
        return (-(to - frm + eps / 2 * g * grad) ** 2 / (2 * eps * g) - 0.5 * torch.log(2 * math.pi * eps * g)).sum()

    exact = (log_q(w0, w1, grad_energy(w1, grads[1]), g1) - log_q(w1, w0, grad_energy(w0, grads[0]), g0)
             + energy(w0) - energy(w1))
    log_det_term = float(0.5 * torch.log(g0 / g1).sum())
    assert abs(log_det_term) > 0.05  # the case can tell the two formulas apart
    assert float(opt.last_log_accept) == pytest.approx(float(exact), abs=1e-4)


def test_init_loss_from_a_few_batches_is_flagged():
    """L(w*) from init_loss_batches=1 (of 64) is off by ~nβ·σ_m: λ̂ moves by that much. The draws'
    own batches show it; the whole set does not trigger the warning."""
    model, batches = _noisy_regression(seed=1)
    base = SamplerConfig(step_size=1e-4, nbeta=500.0, gamma=100.0, chains=4, draws=200, burn_in=20, fetch_every=20,
                         init_loss="full")
    few = estimate_llc(model, mse, batches, base.replace(init_loss_batches=1))
    whole = estimate_llc(model, mse, batches, base)
    assert abs(few.llc_mean - whole.llc_mean) > 50  # the silent error is real here (λ̂ ≈ 4 with the whole set)
    assert any("init_loss_batches=1" in w for w in few.warnings), few.warnings
    assert not any("init_loss_batches" in w for w in whole.warnings), whole.warnings


def _synthetic(values, draws=40, nbeta=1.0, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    chains = []
    for i, v in enumerate(values):
        trace = (v + noise * rng.standard_normal(draws)).tolist()
        chains.append(ChainResult(chain=i, seed=i, llc=float(np.mean(trace)), loss_trace=trace, init_trace=[0.0] * draws))
    return LLCResult.from_chains(chains, SamplerConfig(nbeta=nbeta), 0.0, moving_elements=10)


def test_interval_uses_t_with_chains_minus_one_degrees_of_freedom():
    two = _synthetic([6.5, 7.5])
    lo, hi = two.llc_interval
    assert hi - lo == pytest.approx(2 * 12.706 * 0.5, rel=0.01)  # t(0.975, 1 dof) · std/√2
    # with a 2-chain t interval 7 ± 6.4 does not show it exceeds d/2 = 5 (the old 2·sem check said it did)
    assert not any("exceeds d/2" in w for w in two.warnings)
    four = _synthetic([6.9, 7.0, 7.1, 7.0])
    assert any("exceeds d/2" in w for w in four.warnings)


def test_interval_widens_for_autocorrelated_draws():
    rng = np.random.default_rng(1)
    x = np.zeros((4, 2000))
    for t in range(1, 2000):
        x[:, t] = 0.99 * x[:, t - 1] + rng.standard_normal(4)
    half, _ = mean_interval(x.mean(axis=1), x)
    naive = 1.96 * x.std() / math.sqrt(x.size)
    assert half > 5 * naive


def test_trend_and_rhat_see_a_drift_that_batch_noise_hides():
    """A drift of 1 under batch noise of sd 30: raw block statistics cannot see it; the paired
    signal (the same batches at w*) removes the shared noise and the trend test does."""
    rng = np.random.default_rng(2)
    batch_noise = 30 * rng.standard_normal((4, 400))
    drift = np.linspace(0, 1, 400)[None, :] + 0.1 * rng.standard_normal((4, 400))
    raw, at_w_star = drift + batch_noise, batch_noise
    assert abs(half_trend(raw)) < 3
    assert half_trend(raw - at_w_star) > 4
    assert split_rhat(raw) < 1.01 < 1.5 < split_rhat(raw - at_w_star)  # split R̂ sees the halves differ, on pairs only
    chains = [ChainResult(chain=i, seed=i, llc=float(np.mean(raw[i] - at_w_star[i])), loss_trace=raw[i].tolist(),
                          init_trace=at_w_star[i].tolist()) for i in range(4)]
    result = LLCResult.from_chains(chains, SamplerConfig(nbeta=1.0, init_loss="paired"), 0.0)
    assert any("still rising" in w for w in result.warnings), result.warnings


def _equipartition_result(equipartition, mala, noise=0.001, draws=200, seed=3):
    """Four stationary chains of a 100-weight model that read the given equipartition, MALA and τ."""
    rng = np.random.default_rng(seed)
    chains = []
    for i in range(4):
        trace = (10.0 + rng.standard_normal(draws)).tolist()
        chains.append(ChainResult(chain=i, seed=i, llc=float(np.mean(trace)), loss_trace=trace, init_trace=[0.0] * draws,
                                  mala_acceptance=mala, gradient_noise=noise, equipartition=equipartition))
    return LLCResult.from_chains(chains, SamplerConfig(nbeta=1.0), 0.0, moving_elements=100)


def test_low_equipartition_of_a_singular_model_is_not_called_a_small_step():
    """Equipartition 0.2 at MALA 0.8 is what a singular model reads at a good ε (the DLN 10-20-20-10
    at ε = 3e-6: 0.21 with λ̂ within 2%): its flat directions spread on the scale 1/(εγ). The warning
    fired there before; it now needs room to raise ε (MALA ≥ 0.95 and τ ≤ 0.025), as the logistic
    case at ε 10-100x too small has (MALA 0.99-1.00, τ ≤ 0.004, equipartition 0.02-0.17)."""
    assert not any("not spread" in w for w in _equipartition_result(0.2, mala=0.8).warnings)
    small = _equipartition_result(0.17, mala=0.99, noise=0.004).warnings
    assert any("not spread" in w and "step_size" in w for w in small), small
    # ε already held back by the gradient noise: raising it is not the advice
    assert not any("not spread" in w for w in _equipartition_result(0.17, mala=0.99, noise=0.04).warnings)


def test_a_hot_chain_is_named_by_equipartition_above_one():
    """(w - w*)·∇U per weight is 1 at the target for any potential and flat directions only lower it,
    so 1.2 says λ̂ is inflated by ≥ 20% whatever MALA reads (RMSprop-SGLD on the DLN 10-5-10 at
    ε = 1e-5: 1.21, MALA 0.57, λ̂ +50%, and no warning before)."""
    hot = _equipartition_result(1.2, mala=0.57).warnings
    assert any("hotter" in w and "step_size" in w and "at least 20%" in w for w in hot), hot
    assert not any("hotter" in w for w in _equipartition_result(0.95, mala=0.57).warnings)
