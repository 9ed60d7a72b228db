"""Chains run as one batched computation (cluster.engine.batched) equal chains run one at a time."""
from __future__ import annotations

import pytest
import torch

from cluster.contract.sampler import SamplerConfig

from cluster.engine.estimate import estimate_llc
from cluster.engine.batched import BatchingUnsupported, run_chains_batched
from cluster.engine.result import DIVERGED, SUCCEEDED


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    x = torch.randn(192, 6)
    y = model(x).detach() + 0.1 * torch.randn(192, 2)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 192, 32)]
    return model, batches


def mse(model, batch):
    return ((model(batch[0]) - batch[1]) ** 2).mean()


def _same_chains(a, b, tol=1e-6):
    assert [c.chain for c in a.chains] == [c.chain for c in b.chains]
    for ca, cb in zip(a.chains, b.chains):
        assert (ca.status, ca.steps, ca.seed) == (cb.status, cb.steps, cb.seed)
        if ca.status != SUCCEEDED:  # a blown-up trace amplifies rounding: status and step are what count
            continue
        torch.testing.assert_close(torch.tensor(cb.loss_trace), torch.tensor(ca.loss_trace), rtol=tol, atol=tol)
        torch.testing.assert_close(torch.tensor(cb.init_trace), torch.tensor(ca.init_trace), rtol=tol, atol=tol)
        if ca.status == SUCCEEDED:
            assert cb.llc == pytest.approx(ca.llc, rel=max(tol, 1e-4), abs=1e-6)
        for field in ("mala_acceptance", "equipartition", "gradient_noise", "frac_below_init"):
            va, vb = getattr(ca, field), getattr(cb, field)
            assert (va is None) == (vb is None), field
            if va is not None:
                assert vb == pytest.approx(va, rel=1e-3, abs=1e-6), field


@pytest.mark.parametrize("method,mala,restricted", [("sgld", True, True), ("rmsprop_sgld", True, False)])
def test_batched_chains_equal_sequential_chains(problem, method, mala, restricted):
    model, batches = problem
    params = {"0.weight": torch.rand(16, 6, generator=torch.Generator().manual_seed(1)) > 0.5, "2.bias": None} \
        if restricted else None
    config = SamplerConfig(step_size=1e-4, nbeta=50.0, gamma=10.0, chains=3, burn_in=4, draws=30, seed=3, mala=mala,
                           method=method, fetch_every=10, init_loss="paired")
    before = [p.detach().clone() for p in model.parameters()]
    one_at_a_time = estimate_llc(model, mse, batches, config, params=params)
    together = estimate_llc(model, mse, batches, config, params=params, batch_chains=3)
    _same_chains(one_at_a_time, together)
    assert together.llc_mean == pytest.approx(one_at_a_time.llc_mean, rel=1e-4, abs=1e-6)
    assert [c.extra.get("chains_together") for c in together.chains] == [3, 3, 3]
    assert [c.extra.get("chains_together") for c in one_at_a_time.chains] == [None] * 3
    for p, b in zip(model.parameters(), before):  # w* untouched, grad flags restored
        assert torch.equal(p.detach(), b)
        assert p.grad is None


def test_groups_and_full_init_loss(problem):
    model, batches = problem
    config = SamplerConfig(step_size=1e-4, nbeta=50.0, gamma=10.0, chains=5, burn_in=0, draws=20, seed=0, mala=False,
                           fetch_every=10, init_loss="full")
    _same_chains(estimate_llc(model, mse, batches, config), estimate_llc(model, mse, batches, config, batch_chains=2))


def test_a_diverging_chain_stops_alone(problem):
    model, batches = problem
    # RMSprop with a tiny a throws some chains off at the first steps (V̂ ≈ 0 near w*), not all
    config = SamplerConfig(step_size=1e-3, nbeta=50.0, gamma=10.0, chains=4, burn_in=5, draws=40, seed=3, mala=False,
                           method="rmsprop_sgld", rmsprop_eps=1e-5, fetch_every=10, init_loss="paired")
    a = estimate_llc(model, mse, batches, config)
    b = estimate_llc(model, mse, batches, config, batch_chains=4)
    assert 0 < sum(c.status == DIVERGED for c in a.chains) < 4
    _same_chains(a, b, tol=1e-3)  # RMSprop near V̂ ≈ 0 amplifies the batched kernels' rounding


def test_a_loss_vmap_cannot_batch_falls_back(problem):
    model, batches = problem

    def host_loss(m, batch):
        value = mse(m, batch)
        if float(value) < 0:  # data-dependent Python control flow: not batchable
            raise AssertionError
        return value

    config = SamplerConfig(step_size=1e-4, nbeta=50.0, gamma=10.0, chains=2, burn_in=0, draws=10, seed=0, mala=False,
                           fetch_every=5, init_loss="paired")
    with pytest.raises(BatchingUnsupported):
        from cluster.engine.estimate import _resolve_moving, _moving_only

        moving = _resolve_moving(model, None)
        with _moving_only(model, moving):
            run_chains_batched(model, moving, [0, 1], loss_fn=host_loss, batches=batches, config=config,
                               init_loss=None, elements=sum(p.numel() for p in model.parameters()), progress=None,
                               amp="float32")
    _same_chains(estimate_llc(model, mse, batches, config),
                 estimate_llc(model, host_loss, batches, config, batch_chains=2))


def test_batch_chains_is_validated(problem):
    model, batches = problem
    with pytest.raises(Exception, match="batch_chains"):
        estimate_llc(model, mse, batches, SamplerConfig(step_size=1e-4, nbeta=5.0, burn_in=0), batch_chains=0)


def test_gradients_left_on_the_model_do_not_enter_the_first_step(problem):
    """A model straight from training carries .grad: one-at-a-time chains (and their worker copies) must not
    add it to their first gradient, so they still equal the batched chains and a model without it."""
    model, batches = problem
    config = SamplerConfig(step_size=1e-4, nbeta=50.0, gamma=10.0, chains=2, burn_in=0, draws=10, seed=1, mala=False,
                           fetch_every=5, init_loss="paired")
    clean = estimate_llc(model, mse, batches, config)
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    stale = estimate_llc(model, mse, batches, config)
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    two_workers = estimate_llc(model, mse, batches, config, workers=2)
    together = estimate_llc(model, mse, batches, config, batch_chains=2)
    assert [c.loss_trace for c in stale.chains] == [c.loss_trace for c in clean.chains]
    _same_chains(clean, two_workers)
    _same_chains(clean, together)
    assert all(p.grad is None for p in model.parameters())
