"""Observables recorded during sampling (cluster.engine.observables) and the BIF /
susceptibility estimators on them (cluster.engine.influence).

Known answer: a linear-Gaussian model, where the SGLD chain's stationary law is Gaussian in
closed form, so the covariance (and correlation) over draws of two examples' losses is known.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cluster.contract.sampler import SamplerConfig

from cluster.engine.estimate import estimate_llc
from cluster.engine.influence import bif, bif_stderr, susceptibilities
from cluster.engine.observables import ObservableRecorder

D, N = 3, 40


def _linear_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    # columns scaled so the Hessian XᵀX/n has eigenvalues spread over [1, 3]: mixing stays fast
    q, _ = np.linalg.qr(rng.normal(size=(N, D)))
    x = q * np.sqrt(N) * np.sqrt([1.0, 2.0, 3.0])
    y = x @ np.array([0.5, -1.0, 2.0]) + rng.normal(scale=0.7, size=N)
    w_star = np.linalg.lstsq(x, y, rcond=None)[0]
    return x, y, w_star


def _model(w_star: np.ndarray) -> torch.nn.Module:
    model = torch.nn.Linear(D, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(w_star, dtype=torch.float32)[None, :])
    return model


def _mean_loss(model, batch):
    x, y = batch
    return (0.5 * (y - model(x)[:, 0]) ** 2).mean()


def _example_losses(model, batch):
    x, y = batch
    return 0.5 * (y - model(x)[:, 0]) ** 2


def _exact_loss_covariance(x, y, w_star, nbeta, gamma, eps) -> np.ndarray:
    """Cov over the chain's stationary law of ℓ_i(w) = ½(y_i - x_i·w)², all pairs i, j.

    SGLD on L(w) = L(w*) + ½ δᵀHδ (δ = w - w*) is δ ← (I - εA/2)δ + N(0, εI) with
    A = nβH + γI, whose stationary covariance is Σ = (A - εA²/4)⁻¹ (→ the posterior's A⁻¹ as
    ε → 0). With r the residuals at w*, ℓ_i = ½r_i² - r_i x_iᵀδ + ½(x_iᵀδ)², and for Gaussian
    δ: Cov(ℓ_i, ℓ_j) = r_i r_j x_iᵀΣx_j + ½(x_iᵀΣx_j)².
    """
    h = x.T @ x / len(x)
    a = nbeta * h + gamma * np.eye(D)
    sigma = np.linalg.inv(a - eps * a @ a / 4)
    r = y - x @ w_star
    k = x @ sigma @ x.T
    return np.outer(r, r) * k + 0.5 * k**2


def _run(nbeta=20.0, gamma=1.0, eps=0.02, chains=4, draws=1500, every=1, seed=3):
    x, y, w_star = _linear_problem()
    model = _model(w_star)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    sets = {"a": [(xt[:4], yt[:4])], "b": [(xt[4:8], yt[4:8])]}
    recorder = ObservableRecorder(sets, loss_fn=_example_losses, every=every, granularity="sequence")
    config = SamplerConfig(step_size=eps, nbeta=nbeta, gamma=gamma, chains=chains, burn_in=200, draws=draws,
                           init_loss="full", mala=False, seed=seed, fetch_every=100)
    result = estimate_llc(model, _mean_loss, [(xt, yt)], config, observer=recorder)
    return x, y, w_star, recorder, result


@pytest.fixture(scope="module")
def linear_run():
    return _run()


def test_recorder_shapes_and_weights_restored(linear_run):
    x, y, w_star, recorder, result = linear_run
    losses = recorder.losses()
    assert set(losses) == {"a", "b"}
    assert losses["a"].shape == (4, 1500, 4) and losses["a"].dtype == np.float32
    assert recorder.chains() == [0, 1, 2, 3]
    assert np.array_equal(recorder.draw_indices(0), np.arange(1500))
    assert all(c.status == "succeeded" for c in result.chains)
    # the draws move: losses vary over draws, and their mean is above the loss at w*
    at_star = 0.5 * (y[:4] - x[:4] @ w_star) ** 2
    assert (losses["a"].std(axis=(0, 1)) > 0).all()
    assert (losses["a"].mean(axis=(0, 1)) >= at_star - 1e-9).all()


def test_bif_matches_linear_gaussian_closed_form(linear_run):
    x, y, w_star, recorder, _ = linear_run
    losses = recorder.losses()
    both = np.concatenate([losses["a"], losses["b"]], axis=2)
    exact_cov = _exact_loss_covariance(x, y, w_star, nbeta=20.0, gamma=1.0, eps=0.02)[:8, :8]
    sd = np.sqrt(np.diag(exact_cov))
    exact_corr = exact_cov / np.outer(sd, sd)

    corr = bif(both)
    err = bif_stderr(both)
    off = ~np.eye(8, dtype=bool)
    z = np.abs(corr - exact_corr)[off] / np.maximum(err[off], 1e-3)
    assert z.max() < 4.5, (corr, exact_corr, err)
    # the pairs are far from trivially equal: the test distinguishes them
    assert np.ptp(exact_corr[off]) > 0.3

    cov = bif(both, covariance=True)
    cov_err = bif_stderr(both, covariance=True)
    zc = np.abs(cov - exact_cov) / np.maximum(cov_err, 1e-12)
    assert zc.max() < 4.5
    # a ↔ b block from two operands is the same as the block of the joint matrix
    assert np.allclose(bif(losses["a"], losses["b"]), corr[:4, 4:])


def test_every_kth_draw():
    _, _, _, recorder, _ = _run(chains=2, draws=60, every=7)
    assert recorder.losses()["a"].shape == (2, 9, 4)
    assert np.array_equal(recorder.draw_indices(1), np.arange(0, 60, 7))


def test_token_bif_reduces_to_sequence_for_one_token():
    rng = np.random.default_rng(1)
    losses = rng.normal(size=(3, 50, 5, 1))
    token = bif(losses, granularity="token")
    assert token.shape == (5, 5, 1, 1)
    assert np.allclose(token[..., 0, 0], bif(losses[..., 0]))
    mean_pool = bif(losses, granularity="token", pooling="mean", average_tokens=True)
    assert mean_pool.shape == (5, 5)


def test_susceptibility_is_a_covariance_and_centering_full_differs_only_by_mean_shift():
    rng = np.random.default_rng(2)
    common = rng.normal(size=(2, 400))
    sampling = common[..., None] + 0.1 * rng.normal(size=(2, 400, 6))
    probe = 0.5 * common[..., None] + rng.normal(size=(2, 400, 3)) + 1.0
    restricted = {"s": sampling, "p": probe}
    chi = susceptibilities(restricted, "s")["p"]
    phi = sampling.mean(axis=-1).ravel()
    for i in range(3):
        shift = sampling.mean(axis=-1).ravel() - probe[..., i].ravel()
        assert np.isclose(chi[i], np.cov(phi, shift, ddof=0)[0, 1])
    # devinterp's centering with a full run whose means equal the restricted run's: the same numbers
    same = susceptibilities(restricted, "s", full=restricted, init_loss=0.3, centering="full")["p"]
    assert np.allclose(same, chi)
    with pytest.raises(ValueError, match="needs the full run"):
        susceptibilities(restricted, "s", centering="full")
