"""The memory-lean mode (cluster.engine.lean): bf16 weights, w* as loaded, fp32 drift.

Against the fp32 engine on the same weights (bf16-representable, so both start at the
same w*): the noise-free trajectory stays within bf16 rounding, λ̂ agrees within its
error bar, it holds 10 bytes per moving weight instead of 12 (14 with autocast's
copies), and masks and the return to w* work as in the standard mode. Fast, CPU.
"""
import copy
import math

import numpy as np
import pytest
import torch

from cluster.contract.sampler import ConfigError, SamplerConfig

from cluster.engine.estimate import estimate_llc
from cluster.engine.lean import LeanSGLD
from cluster.engine.sgld import SGLD

SETTINGS = dict(step_size=1e-4, nbeta=50.0, gamma=100.0, chains=8, draws=200, burn_in=50, fetch_every=50,
                mala=False)


def _models(d: int = 6, n: int = 512, off_minimum: float = 0.0):
    """(fp32 model, bf16 model) with the same bf16-representable weights w*, and batches.
    `off_minimum` moves w* away from the weights that made the data (so the drift matters)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    model = torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    with torch.no_grad():
        y = model(x) + 0.1 * torch.randn(n, 1, generator=g)
        for p in model.parameters():
            p.add_(off_minimum * torch.randn(p.shape, generator=g)).copy_(p.bfloat16().float())
    lean = copy.deepcopy(model).bfloat16()
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, n, 64)]
    return model, lean, batches


def mse(model, batch):
    x, y = batch
    dtype = next(model.parameters()).dtype
    return 0.5 * ((model(x.to(dtype)).float() - y) ** 2).mean()


def test_noise_free_trajectory_follows_the_fp32_engine_within_bf16_rounding(monkeypatch):
    fp32, lean, batches = _models(off_minimum=0.3)
    monkeypatch.setattr(SGLD, "_noise", lambda self, params: [torch.zeros_like(p, dtype=torch.float32) for p in params])
    config = SamplerConfig(**{**SETTINGS, "chains": 1, "step_size": 1e-3})
    ref = estimate_llc(fp32, mse, batches, config).chains[0]
    got = estimate_llc(lean, mse, batches, config, memory="lean").chains[0]
    moved = np.abs(np.asarray(ref.loss_trace) - ref.init_trace).max()
    assert moved > 1e-3, "the chain must move for the comparison to mean something"
    np.testing.assert_allclose(got.loss_trace, ref.loss_trace, rtol=2e-2)  # bf16 forward and gradient


def test_llc_agrees_with_the_fp32_engine_within_its_error_bar():
    fp32, lean, batches = _models()
    config = SamplerConfig(**SETTINGS)
    ref = np.asarray(estimate_llc(fp32, mse, batches, config).llc_per_chain)
    got = np.asarray(estimate_llc(lean, mse, batches, config, memory="lean").llc_per_chain)
    error = math.sqrt(ref.var(ddof=1) / ref.size + got.var(ddof=1) / got.size)
    print(f"lean λ̂ {got.mean():.3f} ± {got.std(ddof=1) / math.sqrt(got.size):.3f}, "
          f"fp32 λ̂ {ref.mean():.3f} ± {ref.std(ddof=1) / math.sqrt(ref.size):.3f}, "
          f"difference {got.mean() - ref.mean():+.3f} (error bar {error:.3f})")
    assert abs(got.mean() - ref.mean()) < 3 * error
    assert 0 < ref.mean() < 81 / 2  # d/2 bounds λ


def _state_bytes(optimizer, params) -> int:
    tensors = [t for s in optimizer.state.values() for k, t in s.items() if torch.is_tensor(t) and k != "mask"]
    return sum(t.nbytes for t in tensors) + sum(p.nbytes + p.grad.nbytes for p in params)


@pytest.mark.parametrize("cls,model_dtype,expected", [(SGLD, torch.float32, 12), (LeanSGLD, torch.bfloat16, 10)])
def test_bytes_per_moving_weight(cls, model_dtype, expected):
    p = torch.nn.Parameter(torch.randn(1000, dtype=model_dtype))
    p.grad = torch.randn_like(p)
    opt = cls([p], lr=1e-4, nbeta=10.0, gamma=1.0, generator=torch.Generator().manual_seed(0))
    opt.step()
    assert _state_bytes(opt, [p]) == expected * p.numel()


def test_lean_moves_only_masked_elements_and_returns_to_w_star():
    _, lean, batches = _models()
    w_star = {n: p.detach().clone() for n, p in lean.named_parameters()}
    mask = torch.zeros_like(lean[0].weight, dtype=torch.bool)
    mask[2, 1:4] = True
    seen = []

    def snapshot(progress):
        seen.append({n: p.detach().clone() for n, p in lean.named_parameters()})

    config = SamplerConfig(**{**SETTINGS, "chains": 1, "draws": 50, "step_size": 1e-3})
    estimate_llc(lean, mse, batches, config, params={"0.weight": mask}, memory="lean", progress=snapshot)
    assert seen
    for weights in seen:
        for n, w in weights.items():
            changed = w != w_star[n]
            assert not changed[~mask].any() if n == "0.weight" else not changed.any(), n
    assert any((w["0.weight"] != w_star["0.weight"])[mask].any() for w in seen)
    for n, p in lean.named_parameters():
        assert torch.equal(p, w_star[n]) and p.dtype == torch.bfloat16


def test_lean_needs_half_precision_weights():
    fp32, _, batches = _models()
    with pytest.raises(ConfigError, match="load the model in bfloat16"):
        estimate_llc(fp32, mse, batches, SamplerConfig(**SETTINGS), memory="lean")


def test_lean_with_default_settings_has_no_mala_and_says_what_calibration_could_not_see():
    """mala defaults to true; the lean mode keeps no copies for it, so the chains report none (it
    crashed on the missing virial before), and automatic ε says its pilots saw no MALA or τ."""
    _, lean, batches = _models()
    result = estimate_llc(lean, mse, batches, SamplerConfig(chains=2, draws=100), memory="lean")
    assert all(c.mala_acceptance is None for c in result.chains)
    assert all(p["mala_acceptance"] is None for p in result.calibration["pilots"])
    assert any("no pilot measured MALA acceptance or gradient noise" in w for w in result.warnings), result.warnings
    explicit = estimate_llc(lean, mse, batches, SamplerConfig(**{**SETTINGS, "mala": True}), memory="lean")
    assert not any("no pilot measured" in w for w in explicit.warnings)
