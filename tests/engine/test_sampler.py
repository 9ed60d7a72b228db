"""The engine's mechanics: config validation, restriction masks, restoring w*,
seeds, divergence reports, autocast, diagnostics. Fast, CPU."""
import json
import math

import numpy as np
import pytest
import torch

from cluster.contract.sampler import ConfigError, SamplerConfig

from cluster.engine.diagnostics import effective_sample_size, split_rhat

from cluster.engine.estimate import estimate_llc
from cluster.engine.seeds import chain_seed


def _regression(d=6, n=512, seed=0, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    torch.manual_seed(seed)  # the layers' initialisation: independent of which tests ran before
    model = torch.nn.Sequential(torch.nn.Linear(d, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    with torch.no_grad():
        y = model(x) + noise * torch.randn(n, 1, generator=g)
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, n, 64)]
    return model, batches


def mse(model, batch):
    x, y = batch
    return 0.5 * ((model(x) - y) ** 2).mean()


FAST = dict(step_size=1e-4, nbeta=50.0, gamma=100.0, chains=2, draws=40, burn_in=10, fetch_every=10)


@pytest.mark.parametrize(
    "field,value",
    [
        ("step_size", 0.0), ("step_size", -1e-3), ("step_size", float("nan")), ("step_size", 2.0),
        ("nbeta", 0), ("nbeta", float("inf")), ("gamma", -1.0), ("chains", 0), ("chains", 1.5),
        ("draws", 0), ("burn_in", -1), ("steps_between_draws", 0), ("method", "adam"),
        ("dtype", "int8"), ("init_loss", "some"), ("seed", -3), ("rmsprop_alpha", 1.0), ("fetch_every", 0),
        ("mala", "yes"), ("draws", 10**9),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError) as err:
        SamplerConfig(**{field: value})
    assert err.value.field == field
    assert field in str(err.value)


def test_unknown_setting_is_rejected():
    with pytest.raises(ConfigError, match="unknown sampler setting"):
        SamplerConfig.from_dict({"stepsize": 1e-3})


def test_weights_return_to_w_star_and_grad_flags_are_restored():
    model, batches = _regression()
    model[2].bias.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    estimate_llc(model, mse, batches, SamplerConfig(**FAST))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.grad is None
    assert not model[2].bias.requires_grad and model[0].weight.requires_grad


def test_only_masked_elements_move():
    model, batches = _regression()
    mask = torch.zeros_like(model[0].weight, dtype=torch.bool)
    mask[1, 2:5] = True
    w_star = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = {}

    def snapshot(progress):
        seen[progress.step] = {n: p.detach().clone() for n, p in model.named_parameters()}

    result = estimate_llc(model, mse, batches, SamplerConfig(**FAST), params={"0.weight": mask}, progress=snapshot)
    assert seen and result.moving_elements == 3
    for weights in seen.values():
        for n, w in weights.items():
            changed = w != w_star[n]
            if n == "0.weight":
                assert changed[mask].all() and not changed[~mask].any()
            else:
                assert not changed.any(), n


def test_unknown_parameter_and_empty_restriction_are_errors():
    model, batches = _regression()
    with pytest.raises(ConfigError, match="not a parameter"):
        estimate_llc(model, mse, batches, SamplerConfig(**FAST), params=["0.wieght"])
    with pytest.raises(ConfigError, match="selects no weights"):
        estimate_llc(model, mse, batches, SamplerConfig(**FAST),
                     params={"0.weight": torch.zeros_like(model[0].weight, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="empty"):
        estimate_llc(model, mse, [], SamplerConfig(**FAST))


def test_chain_seeds_depend_only_on_seed_and_index():
    model, batches = _regression()
    config = SamplerConfig(**{**FAST, "chains": 3})
    full = estimate_llc(model, mse, batches, config)
    alone = estimate_llc(model, mse, batches, config, chains=[2], init_loss=full.init_loss)
    assert alone.llc_per_chain == [full.llc_per_chain[2]]
    assert full.chains[2].seed == chain_seed(config.seed, 2) != chain_seed(config.seed + 1, 2)
    assert len(set(full.llc_per_chain)) == 3
    other = estimate_llc(model, mse, batches, config.replace(seed=1))
    assert other.llc_per_chain != full.llc_per_chain


def test_too_large_step_is_reported_as_diverged_not_a_number():
    model, batches = _regression()
    result = estimate_llc(model, mse, batches, SamplerConfig(**{**FAST, "step_size": 0.9, "nbeta": 1e4}))
    assert result.diagnostics["diverged_chains"] == [0, 1]
    assert math.isnan(result.llc_mean)
    assert any("every chain diverged" in w for w in result.warnings)
    json.dumps(result.to_dict())  # NaN is allowed in the JSON form


def test_non_finite_loss_marks_only_that_chain():
    model, batches = _regression()
    calls = {"n": 0}

    def flaky(model, batch):
        calls["n"] += torch.is_grad_enabled()  # step losses only, not the evaluations at w*
        loss = mse(model, batch)
        # chain 0 runs first (FAST: 50 steps); poison its 20th step only
        return loss * float("nan") if calls["n"] == 20 and torch.is_grad_enabled() else loss

    config = SamplerConfig(**{**FAST, "chains": 3})
    result = estimate_llc(model, flaky, batches, config, init_loss=0.01)
    assert result.diagnostics["diverged_chains"] == [0]
    assert math.isnan(result.llc_per_chain[0])
    assert result.llc_mean == pytest.approx(np.mean(result.llc_per_chain[1:]))
    assert "step 19" in result.chains[0].message


def test_paired_and_full_init_loss_agree():
    model, batches = _regression(noise=0.3)
    base = SamplerConfig(**{**FAST, "draws": 200, "chains": 2})
    full = estimate_llc(model, mse, batches, base.replace(init_loss="full"))
    paired = estimate_llc(model, mse, batches, base.replace(init_loss="paired"))
    assert paired.init_loss == pytest.approx(full.init_loss, rel=0.2)
    assert paired.llc_mean == pytest.approx(full.llc_mean, rel=0.35)
    assert len(paired.chains[0].init_trace) == 200


def test_bf16_autocast_and_half_precision_model():
    model, batches = _regression()
    ref = estimate_llc(model, mse, batches, SamplerConfig(**{**FAST, "draws": 200}))
    amp = estimate_llc(model, mse, batches, SamplerConfig(**{**FAST, "draws": 200, "dtype": "bfloat16"}))
    assert amp.llc_mean == pytest.approx(ref.llc_mean, rel=0.3)
    half = model.to(torch.bfloat16)
    before = [p.detach().clone() for p in half.parameters()]
    r = estimate_llc(half, mse, [(x.bfloat16(), y.bfloat16()) for x, y in batches], SamplerConfig(**FAST))
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, half.parameters()))
    assert all(math.isfinite(v) for v in r.llc_per_chain)


def test_mala_acceptance_falls_with_step_size():
    model, batches = _regression()
    small = estimate_llc(model, mse, batches, SamplerConfig(**{**FAST, "step_size": 1e-5, "nbeta": 500.0}))
    large = estimate_llc(model, mse, batches, SamplerConfig(**{**FAST, "step_size": 4e-3, "nbeta": 500.0}))
    assert small.diagnostics["mala_acceptance"] > 0.9
    assert large.diagnostics["mala_acceptance"] < small.diagnostics["mala_acceptance"] - 0.2


def test_rmsprop_sgld_runs_and_restores():
    model, batches = _regression(noise=0.3)
    before = [p.detach().clone() for p in model.parameters()]
    r = estimate_llc(model, mse, batches, SamplerConfig(**{**FAST, "method": "rmsprop_sgld", "step_size": 1e-5}))
    assert all(math.isfinite(v) and v > 0 for v in r.llc_per_chain), (r.llc_per_chain, r.warnings)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_split_rhat_and_ess_on_known_processes():
    rng = np.random.default_rng(0)
    iid = rng.standard_normal((4, 1000))
    assert split_rhat(iid) == pytest.approx(1.0, abs=0.01)
    assert effective_sample_size(iid) == pytest.approx(4000, rel=0.15)
    shifted = iid + np.arange(4)[:, None]
    assert split_rhat(shifted) > 1.5
    # AR(1) with ρ = 0.9: ESS ≈ N(1-ρ)/(1+ρ)
    rho, x = 0.9, np.zeros((4, 4000))
    for t in range(1, 4000):
        x[:, t] = rho * x[:, t - 1] + rng.standard_normal(4)
    assert effective_sample_size(x) == pytest.approx(16000 * 0.1 / 1.9, rel=0.3)
    with pytest.raises(ValueError, match="at least 4 draws"):
        split_rhat(iid[:, :3])


def test_concurrent_workers_give_the_same_chains():
    model, _ = _regression()
    x = torch.randn(256, 6, generator=torch.Generator().manual_seed(3))
    y = model(x).detach()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    config = SamplerConfig(**{**FAST, "chains": 4})
    before = [p.detach().clone() for p in model.parameters()]
    one = estimate_llc(model, mse, loader, config)
    two = estimate_llc(model, mse, loader, config, workers=2)
    # equal up to the rounding of reductions split over fewer intra-op threads
    np.testing.assert_allclose(one.llc_per_chain, two.llc_per_chain, rtol=1e-9)
    np.testing.assert_allclose([c.loss_trace for c in one.chains], [c.loss_trace for c in two.chains], rtol=1e-9)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the replicas did not touch w*
    with pytest.raises(ConfigError, match="workers"):
        estimate_llc(model, mse, loader, config, workers=0)


def test_init_loss_is_deterministic_over_shuffled_partial_batches():
    from cluster.engine.estimate import compute_init_loss

    model, _ = _regression()
    x = torch.randn(100, 6)
    y = torch.randn(100, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True,
                                         drop_last=True)  # which 4 rows are dropped depends on the shuffle
    config = SamplerConfig(**FAST)
    values = {compute_init_loss(model, mse, loader, config) for _ in range(3)}
    torch.rand(7)  # moving the global RNG must not matter either
    values.add(compute_init_loss(model, mse, loader, config))
    assert len(values) == 1
    assert compute_init_loss(model, mse, loader, config.replace(seed=5)) not in values
