"""The fused SGLD update (cluster.engine.fused) equals the `_foreach` reference (cluster.engine.sgld);
L_m(w*) by swapping storage pointers equals the copying swap (cluster.engine.estimate)."""
from __future__ import annotations

import copy

import pytest
import torch

from cluster.engine import fused
from cluster.engine.sgld import SGLD


def _problem(masks: bool):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 7)), torch.nn.Parameter(torch.randn(11)),
              torch.nn.Parameter(torch.randn(3, 3))]
    mask = [None, torch.rand(11) > 0.5, torch.tensor([True, False, True]).view(3, 1).expand(3, 3)] if masks else None
    return params, mask


def _trajectory(update: str, preconditioner: str, masks: bool, steps: int = 25):
    params, mask = _problem(masks)
    start = [p.detach().clone() for p in params]
    opt = SGLD([{"params": params, "masks": mask}], lr=1e-3, nbeta=10.0, gamma=5.0, preconditioner=preconditioner,
               generator=torch.Generator().manual_seed(3), update=update)
    out = []
    for _ in range(steps):
        loss = sum(((p ** 2).sin() * (i + 1)).sum() for i, p in enumerate(params))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(torch.cat([p.detach().flatten() for p in params]))
    return torch.stack(out), start, params, mask


@pytest.mark.parametrize("preconditioner", ["none", "rmsprop"])
@pytest.mark.parametrize("masks", [False, True])
def test_fused_update_equals_foreach_reference(preconditioner, masks):
    ref, start, _, _ = _trajectory("foreach", preconditioner, masks)
    got, _, params, mask = _trajectory("fused", preconditioner, masks)
    # w moves by ~√ε·steps = 0.16 from w*: compare the displacement to rounding of fp32 w
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    if masks:  # elements outside the restriction never move
        for p, s, m in zip(params, start, mask):
            if m is not None:
                assert torch.equal(p.detach()[~m.expand_as(p)], s[~m.expand_as(p)])


def test_fused_single_step_matches_formula():
    torch.manual_seed(1)
    w, a, g, n = (torch.randn(64) for _ in range(4))
    eps, nbeta, gamma = 1e-3, 30.0, 100.0
    expected = w - eps / 2 * (nbeta * g + gamma * (w - a)) + eps ** 0.5 * n
    p = w.clone()
    fused.sgld_update_([p], [a], [g], [n], [None], fused.scalars(eps=eps, nbeta=nbeta, gamma=gamma))
    torch.testing.assert_close(p, expected, rtol=0, atol=1e-6)


def test_mala_tracking_keeps_the_reference_path():
    params, _ = _problem(False)
    opt = SGLD(params, lr=1e-3, nbeta=10.0, gamma=5.0, generator=torch.Generator().manual_seed(0),
               track_mala=True, update="fused")
    for _ in range(3):
        sum((p ** 2).sum() for p in params).backward()
        opt.step()
        opt.zero_grad()
    assert opt.last_log_accept is not None and torch.isfinite(opt.last_log_accept)


def test_unknown_update_is_refused():
    with pytest.raises(ValueError, match="update"):
        SGLD([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, nbeta=1.0, gamma=1.0, update="triton")


@pytest.mark.slow
@pytest.mark.parametrize("preconditioner", ["none", "rmsprop"])
def test_compiled_update_equals_foreach_reference(preconditioner):
    ok, why = fused.compile_available()
    if not ok:
        pytest.skip(f"torch.compile cannot build kernels here: {why}")
    ref, *_ = _trajectory("foreach", preconditioner, True, steps=8)
    got, *_ = _trajectory("compiled", preconditioner, True, steps=8)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def _anchored_mlp():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    params = list(model.parameters())
    opt = SGLD(params, lr=1e-2, nbeta=10.0, gamma=1.0, generator=torch.Generator().manual_seed(0))
    x, y = torch.randn(32, 6), torch.randn(32, 3)
    loss_fn = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()  # noqa: E731
    loss_fn(model, (x, y)).backward()
    opt.step()  # w* captured, w moved away from it
    return model, params, opt, loss_fn, (x, y)


def test_anchor_loss_by_pointer_swap_equals_copy_swap():
    """L_m(w*) with the moving weights' storage pointers swapped equals the copying swap to the bit,
    and leaves every weight at w, in its own storage, untouched."""
    from cluster.engine import estimate

    model, params, opt, loss_fn, batch = _anchored_mlp()
    before = [(p.detach().clone(), p.data_ptr()) for p in params]
    assert estimate._own_storages(model, params)
    by_copy = estimate._loss_at_anchor(model, loss_fn, batch, opt, torch.device("cpu"), "float32", pointers=False)
    by_pointer = estimate._loss_at_anchor(model, loss_fn, batch, opt, torch.device("cpu"), "float32", pointers=True)
    assert torch.equal(by_copy, by_pointer)
    for p, (w, ptr) in zip(params, before):
        assert torch.equal(p, w) and p.data_ptr() == ptr
    # L_m(w*) itself: the loss of a copy of the model put at w*
    at_anchor = copy.deepcopy(model)
    with torch.no_grad():
        for q, p in zip(at_anchor.parameters(), params):
            q.copy_(opt.state[p]["anchor"])
    assert torch.equal(by_pointer, loss_fn(at_anchor, batch).detach())


def test_weights_sharing_a_flat_buffer_are_swapped_by_copy():
    """Views into one flat buffer (or a buffer aliasing a weight) keep the copying swap."""
    from cluster.engine import estimate

    model, params, *_ = _anchored_mlp()
    flat = torch.cat([p.detach().flatten() for p in params])
    offset = 0
    for p in params:
        p.data = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    assert not estimate._own_storages(model, params)
    model2, params2, *_ = _anchored_mlp()
    model2.register_buffer("alias", params2[0].detach()[0])
    assert not estimate._own_storages(model2, params2)
