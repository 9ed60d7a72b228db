"""Localized SGLD as a torch optimizer.

    w ← w - (ε/2)·G·[nβ·∇L_m(w) + γ·(w - w*)] + √(εG)·ξ,   ξ ~ N(0, I)

G = 1 for plain SGLD and G = 1/(√V + a) for RMSprop-preconditioned SGLD, V an
exponential average of (∇L_m)². The anchor w* is captured lazily, inside the
first `step()`, from the parameter itself: under DeepSpeed ZeRO the optimizer
sees flat fp32 partitions whose `param_groups` are only filled in then.

Updates are `torch._foreach_*` over all parameters of a group, the noise is one
`randn` per group (into a buffer kept between steps), and nothing here synchronises
with the host. The lists of parameters, states and anchors are built once per group
and reused while the set of parameters with gradients stays the same.

`update="fused"` computes the same update in one expression per tensor (read w, w*,
g, ξ and V, write w and V: one pass over memory instead of ~7); `update="compiled"`
runs that function through `torch.compile` (one kernel per tensor on a GPU). Both
equal the `_foreach` reference to floating-point rounding (tests/engine/test_fused.py);
MALA tracking needs the intermediate tensors and always takes the `_foreach` path.

Chain mode (`generators=[g_0, …, g_{C-1}]`, cluster.engine.batched): every parameter
carries C chains stacked on dim 0 and chain c draws its noise from g_c exactly as a
one-chain SGLD would (one `randn` of all its moving elements per step); w* and the
masks are stored once, without the chain dimension, and broadcast; the MALA, virial
and gradient-noise sums are per chain (tensors of shape (C,)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from cluster.engine import fused

UPDATES = ("foreach", "fused", "compiled")


@dataclass
class _Plan:
    """A group's moving tensors and their states, reused while they stay the same."""
    key: tuple
    params: list
    states: list
    anchors: list
    masks: list
    fp32: bool
    scalars: torch.Tensor | None = None  # the fused update's constants, on the device


class SGLD(torch.optim.Optimizer):
    """Args:
        params: parameters (or groups) that move; each group may carry `masks`,
            a list aligned with `params` of bool tensors (True = moves) or None.
        lr: the step size ε.
        nbeta: nβ; the loss whose gradient is in `p.grad` is the mean loss L_m.
        gamma: localization strength γ.
        preconditioner: "none" or "rmsprop".
        generator: the noise source (seed it per chain).
        track_mala: keep what the MALA acceptance estimate needs (2 extra
            copies of the moving weights); `last_log_accept` holds log α of the
            proposal made by the previous step, as a 0-dim device tensor.
        update: "foreach" (the reference), "fused" (one expression per tensor) or
            "compiled" (the fused function through torch.compile); see the module docstring.
        generators: chain mode: one generator per chain, parameters stacked (C, ...).
    """

    def __init__(
        self,
        params: Iterable,
        *,
        lr: float,
        nbeta: float,
        gamma: float,
        preconditioner: str = "none",
        alpha: float = 0.99,
        eps: float = 1e-5,
        generator: torch.Generator | None = None,
        track_mala: bool = False,
        update: str = "foreach",
        generators: Sequence[torch.Generator] | None = None,
    ):
        if preconditioner not in ("none", "rmsprop"):
            raise ValueError(f"preconditioner must be 'none' or 'rmsprop', got {preconditioner!r}")
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        defaults = dict(lr=lr, nbeta=nbeta, gamma=gamma, preconditioner=preconditioner, alpha=alpha, eps=eps, masks=None)
        super().__init__(params, defaults)
        self.generator = generator
        self.track_mala = track_mala
        self.last_log_accept: torch.Tensor | None = None
        self.last_virial: torch.Tensor | None = None  # (w - w*)·∇U at this step's w (track_mala only)
        # Σ_t ||g_t - g_{t-1}||² over the moving elements (device), its term count and the element count
        self._grad_diff_sq: torch.Tensor | None = None
        self._grad_diff_terms = 0
        self._moving_elements = 0
        self.update = update
        self.generators = list(generators) if generators is not None else None
        self.chains = len(self.generators) if self.generators is not None else None
        self._plans: dict[int, _Plan] = {}
        self._noise_buffer: torch.Tensor | None = None
        self._swap_buffer: list[torch.Tensor] | None = None  # w while L_m(w*) is evaluated (estimate._loss_at_anchor)

    def anchors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(parameter, w*) pairs captured so far."""
        return [(p, self.state[p]["anchor"]) for g in self.param_groups for p in g["params"] if "anchor" in self.state[p]]

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim API
        loss = closure() if closure is not None else None
        log_accepts, virials = [], []
        for index, group in enumerate(self.param_groups):
            plan = self._plan(index, group)
            if plan is None:
                continue
            params, states, anchors = plan.params, plan.states, plan.anchors
            grads = [p.grad if p.grad.dtype == torch.float32 else p.grad.float() for p in params]
            eps, nbeta, gamma = group["lr"], group["nbeta"], group["gamma"]
            rmsprop = group["preconditioner"] == "rmsprop"
            if rmsprop:
                states[0]["rms_steps"] = states[0].get("rms_steps", 0) + 1
            if self.update != "foreach" and not self.track_mala:
                self._fused_step(plan, group, grads)
                continue

            # drift = nβ·g + γ·(w - w*)
            drift = torch._foreach_sub(params if plan.fp32 else [p.float() for p in params], anchors)
            deltas = [d.clone() for d in drift] if self.track_mala else None
            torch._foreach_mul_(drift, gamma)
            torch._foreach_add_(drift, grads, alpha=nbeta)
            self._mask(drift, states)
            if deltas is not None:
                # (w - w*)·∇U: its mean over a stationary chain is the number of moving weights
                # (equipartition, E[δ_i ∂_i U] = 1); a chain still spreading out reads less
                virials.append(torch.stack([self._sum(d * g) for d, g in zip(deltas, drift)]).sum(0))

            precond = inv_g = None
            if rmsprop:
                square_avgs = [s["square_avg"] for s in states]
                torch._foreach_mul_(square_avgs, group["alpha"])
                torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - group["alpha"])
                # 1/G = √V̂ + a with V̂ = V/(1 - α^t) bias-corrected, so the first steps
                # are not preconditioned by 1/a (V starts at 0) and thrown off.
                inv_g = torch._foreach_sqrt(square_avgs)
                torch._foreach_mul_(inv_g, 1 / math.sqrt(1 - group["alpha"] ** states[0]["rms_steps"]))
                torch._foreach_add_(inv_g, group["eps"])
                precond = torch._foreach_reciprocal(inv_g)

            noise = self._noise(params)
            self._mask(noise, states)
            if self.track_mala:
                self._track_grad_noise(grads, states)
                log_accepts.append(self._log_accept(states, drift, precond, inv_g, eps))
                # -log q(w'|w) = ||ξ||²/2 + ½·Σ log G, up to a constant that cancels in log α.
                states[0]["fwd_energy"] = 0.5 * torch.stack([self._sum(n * n) for n in noise]).sum(0)
                if precond is not None:
                    states[0]["fwd_energy"] = states[0]["fwd_energy"] + self._half_log_det(precond, states)

            # update = -(ε/2)·G·drift + √(εG)·ξ  (drift and ξ are masked, so the update is too)
            if precond is not None:
                update = torch._foreach_mul(drift, precond)
                torch._foreach_mul_(noise, torch._foreach_sqrt(precond))
            else:
                update = [d.clone() for d in drift] if self.track_mala else drift
            torch._foreach_mul_(update, -eps / 2)
            torch._foreach_add_(update, noise, alpha=math.sqrt(eps))
            if self.track_mala:
                for s, d, u in zip(states, drift, update):
                    s["prev_drift"], s["prev_update"] = d, u
            if plan.fp32:
                torch._foreach_add_(params, update)
            else:
                for p, u in zip(params, update):
                    p.add_(u.to(p.dtype))
        self.last_log_accept = torch.stack(log_accepts).sum(0) if log_accepts and log_accepts[0] is not None else None
        self.last_virial = torch.stack(virials).sum(0) if virials else None
        return loss

    def _track_grad_noise(self, grads: list[torch.Tensor], states: list[dict]) -> None:
        """Accumulate ||g_t - g_{t-1}||² of successive minibatch gradients: half its mean is the
        batch-to-batch gradient variance (the change of the full gradient over one step of size
        √ε is far smaller), which adds (ε·nβ)²/4·Var(g) to the ε of injected noise."""
        if "prev_grad" in states[0]:
            diffs = [g - s["prev_grad"] for g, s in zip(grads, states)]
            self._mask(diffs, states)
            total = torch.stack([self._sum(d * d) for d in diffs]).sum(0)
            self._grad_diff_sq = total if self._grad_diff_sq is None else self._grad_diff_sq + total
            self._grad_diff_terms += 1
        else:
            per_chain = [g[0] if self.chains else g for g in grads]
            self._moving_elements += sum(g.numel() if s["mask"] is None else int(s["mask"].expand_as(g).sum())
                                         for g, s in zip(per_chain, states))
        for g, s in zip(grads, states):
            s["prev_grad"] = g.detach().clone()

    def gradient_variance(self) -> torch.Tensor | None:
        """Mean over moving elements of the minibatch gradient's variance (0-dim device tensor)."""
        if self._grad_diff_sq is None or not self._moving_elements:
            return None
        return self._grad_diff_sq / (2 * self._grad_diff_terms * self._moving_elements)

    def _state(self, p: torch.Tensor, mask: torch.Tensor | None) -> dict:
        state = self.state[p]
        if "anchor" not in state:
            # chain mode: every chain starts at w*, kept once and broadcast over the chains
            state["anchor"] = (p[0] if self.chains else p).detach().float().clone()
            # kept as given (a bool tensor, possibly a broadcast view): no full-size copy
            state["mask"] = None if mask is None else mask.to(device=p.device)
            group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
            if group["preconditioner"] == "rmsprop":
                state["square_avg"] = torch.zeros_like(p, dtype=torch.float32)  # per chain in chain mode
        return state

    @staticmethod
    def _mask(tensors: list[torch.Tensor], states: list[dict]) -> None:
        for t, s in zip(tensors, states):
            if s["mask"] is not None:
                t.mul_(s["mask"])

    def _noise(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """ξ for `params`: one randn over all their elements (per chain in chain mode), drawn
        into a buffer kept while the sizes stay the same (the values are those of a fresh randn)."""
        chains = self.chains or 1
        sizes = [p.numel() // chains for p in params]
        shape = (chains, sum(sizes)) if self.chains else (sum(sizes),)
        flat = self._noise_buffer
        if flat is None or flat.shape != shape or flat.device != params[0].device:
            flat = self._noise_buffer = torch.empty(shape, device=params[0].device, dtype=torch.float32)
        if self.chains:
            for row, generator in zip(flat, self.generators):
                torch.randn(shape[1], generator=generator, out=row)
            return [chunk.view(p.shape) for chunk, p in zip(flat.split(sizes, dim=1), params)]
        torch.randn(shape[0], generator=self.generator, out=flat)
        return [chunk.view(p.shape) for chunk, p in zip(flat.split(sizes), params)]

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over a tensor's elements: a 0-dim tensor, or one sum per chain in chain mode."""
        return t.reshape(self.chains, -1).sum(1) if self.chains else t.sum()

    def _plan(self, index: int, group: dict) -> _Plan | None:
        """The group's parameters with gradients, their states, anchors and masks (cached)."""
        masks = group["masks"] or [None] * len(group["params"])
        live = [(p, m) for p, m in zip(group["params"], masks) if p.grad is not None]
        if not live:
            return None
        key = tuple(id(p) for p, _ in live)
        plan = self._plans.get(index)
        # a cleared state (a new chain under ZeRO: ShardedSGLD.reset) makes a new plan
        if plan is None or plan.key != key or plan.states[0] is not self.state.get(live[0][0]):
            states = [self._state(p, m) for p, m in live]
            params = [p for p, _ in live]
            plan = _Plan(key=key, params=params, states=states, anchors=[s["anchor"] for s in states],
                         masks=[s["mask"] for s in states], fp32=all(p.dtype == torch.float32 for p in params))
            self._plans[index] = plan
        return plan

    def _fused_step(self, plan: _Plan, group: dict, grads: list[torch.Tensor]) -> None:
        """The update in one pass per tensor (cluster.engine.fused), same formula as the reference."""
        rmsprop = group["preconditioner"] == "rmsprop"
        device = plan.params[0].device
        if plan.scalars is None:
            plan.scalars = fused.scalars(eps=group["lr"], nbeta=group["nbeta"], gamma=group["gamma"],
                                         alpha=group["alpha"], reg=group["eps"], device=device)
        if rmsprop:  # the bias correction 1/√(1 - α^t): written on the device, no sync
            plan.scalars[fused.BIAS].fill_(1 / math.sqrt(1 - group["alpha"] ** plan.states[0]["rms_steps"]))
        noise = self._noise(plan.params)
        square_avgs = [s["square_avg"] for s in plan.states] if rmsprop else None
        fn = fused.update_function(compiled=self.update == "compiled", rmsprop=rmsprop)
        if plan.fp32:
            fn(plan.params, plan.anchors, grads, noise, plan.masks, plan.scalars, square_avgs)
        else:  # half-precision weights: update an fp32 copy, round it back
            work = [p.float() for p in plan.params]
            fn(work, plan.anchors, grads, noise, plan.masks, plan.scalars, square_avgs)
            for p, w in zip(plan.params, work):
                p.copy_(w)

    def _log_accept(self, states, drift, precond, inv_g, eps: float) -> torch.Tensor | None:
        """log α of the previous proposal w → w' (this step's w), on the device.

        log α = log q(w|w') - log q(w'|w) + U(w) - U(w'), with the energy
        difference by the trapezoid rule, U(w) - U(w') ≈ -δ·(∇U(w) + ∇U(w'))/2,
        which is exact for quadratic U and, unlike a difference of minibatch
        losses, carries no nβ-scaled batch-to-batch noise.
        """
        if "prev_drift" not in states[0]:
            return None
        fwd_energy = states[0]["fwd_energy"]
        terms = []
        for i, s in enumerate(states):
            delta, d_prev, d_now = s["prev_update"], s["prev_drift"], drift[i]
            g = precond[i] if precond is not None else None
            # w - w' + (ε/2)·G·∇U(w'): the reverse proposal's residual
            back = d_now * g if g is not None else d_now.clone()
            back.mul_(eps / 2).sub_(delta)
            sq = back * back
            if inv_g is not None:
                sq.mul_(inv_g[i])
            rev_energy = self._sum(sq) / (2 * eps)
            du = -self._sum(delta * (d_prev + d_now)) / 2
            terms.append(du - rev_energy)
        # log q(w|w') carries -½·Σ log G' of the reverse proposal's covariance εG'
        rev_log_det = self._half_log_det(precond, states) if precond is not None else 0.0
        return torch.stack(terms).sum(0) + fwd_energy - rev_log_det

    def _half_log_det(self, precond: list[torch.Tensor], states: list[dict]) -> torch.Tensor:
        """½·Σ log G over the moving elements: the log-determinant part of a proposal's density."""
        logs = torch._foreach_log(precond)
        self._mask(logs, states)
        return 0.5 * torch.stack([self._sum(t) for t in logs]).sum(0)
