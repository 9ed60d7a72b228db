"""Localized SGLD as a torch optimizer.

    w ← w - (ε/2)·G·[nβ·∇L_m(w) + γ·(w - w*)] + √(εG)·ξ,   ξ ~ N(0, I)

G = 1 for plain SGLD and G = 1/(√V + a) for RMSprop-preconditioned SGLD, V an
exponential average of (∇L_m)². The anchor w* is captured lazily, inside the
first `step()`, from the parameter itself: under DeepSpeed ZeRO the optimizer
sees flat fp32 partitions whose `param_groups` are only filled in then.

Updates are `torch._foreach_*` over all parameters of a group, the noise is one
`randn` per group, and nothing here synchronises with the host.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch


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
    ):
        if preconditioner not in ("none", "rmsprop"):
            raise ValueError(f"preconditioner must be 'none' or 'rmsprop', got {preconditioner!r}")
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

    def anchors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(parameter, w*) pairs captured so far."""
        return [(p, self.state[p]["anchor"]) for g in self.param_groups for p in g["params"] if "anchor" in self.state[p]]

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim API
        loss = closure() if closure is not None else None
        log_accepts, virials = [], []
        for group in self.param_groups:
            masks = group["masks"] or [None] * len(group["params"])
            live = [(p, m) for p, m in zip(group["params"], masks) if p.grad is not None]
            if not live:
                continue
            params = [p for p, _ in live]
            grads = [p.grad.float() if p.grad.dtype != torch.float32 else p.grad for p in params]
            states = [self._state(p, m) for p, m in live]
            anchors = [s["anchor"] for s in states]
            eps, nbeta, gamma = group["lr"], group["nbeta"], group["gamma"]

            # drift = nβ·g + γ·(w - w*)
            drift = torch._foreach_sub([p.float() if p.dtype != torch.float32 else p for p in params], anchors)
            deltas = [d.clone() for d in drift] if self.track_mala else None
            torch._foreach_mul_(drift, gamma)
            torch._foreach_add_(drift, grads, alpha=nbeta)
            self._mask(drift, states)
            if deltas is not None:
                # (w - w*)·∇U: its mean over a stationary chain is the number of moving weights
                # (equipartition, E[δ_i ∂_i U] = 1); a chain still spreading out reads less
                virials.append(torch.stack([(d * g).sum() for d, g in zip(deltas, drift)]).sum())

            precond = None
            if group["preconditioner"] == "rmsprop":
                square_avgs = [s["square_avg"] for s in states]
                torch._foreach_mul_(square_avgs, group["alpha"])
                torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - group["alpha"])
                # 1/G = √V̂ + a with V̂ = V/(1 - α^t) bias-corrected, so the first steps
                # are not preconditioned by 1/a (V starts at 0) and thrown off.
                states[0]["rms_steps"] = states[0].get("rms_steps", 0) + 1
                inv_g = torch._foreach_sqrt(square_avgs)
                torch._foreach_mul_(inv_g, 1 / math.sqrt(1 - group["alpha"] ** states[0]["rms_steps"]))
                torch._foreach_add_(inv_g, group["eps"])
                precond = torch._foreach_reciprocal(inv_g)

            noise = self._noise(params)
            self._mask(noise, states)
            if self.track_mala:
                self._track_grad_noise(grads, states)
                log_accepts.append(self._log_accept(states, drift, precond, inv_g if precond is not None else None, eps))
                # -log q(w'|w) = ||ξ||²/2 + ½·Σ log G, up to a constant that cancels in log α.
                states[0]["fwd_energy"] = 0.5 * torch.stack([(n * n).sum() for n in noise]).sum()
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
            for p, u in zip(params, update):
                p.add_(u.to(p.dtype))
        self.last_log_accept = torch.stack(log_accepts).sum() if log_accepts and log_accepts[0] is not None else None
        self.last_virial = torch.stack(virials).sum() if virials else None
        return loss

    def _track_grad_noise(self, grads: list[torch.Tensor], states: list[dict]) -> None:
        """Accumulate ||g_t - g_{t-1}||² of successive minibatch gradients: half its mean is the
        batch-to-batch gradient variance (the change of the full gradient over one step of size
        √ε is far smaller), which adds (ε·nβ)²/4·Var(g) to the ε of injected noise."""
        if "prev_grad" in states[0]:
            diffs = [g - s["prev_grad"] for g, s in zip(grads, states)]
            self._mask(diffs, states)
            total = torch.stack([(d * d).sum() for d in diffs]).sum()
            self._grad_diff_sq = total if self._grad_diff_sq is None else self._grad_diff_sq + total
            self._grad_diff_terms += 1
        else:
            self._moving_elements += sum(g.numel() if s["mask"] is None else int(s["mask"].expand_as(g).sum())
                                         for g, s in zip(grads, states))
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
            state["anchor"] = p.detach().float().clone()
            # kept as given (a bool tensor, possibly a broadcast view): no full-size copy
            state["mask"] = None if mask is None else mask.to(device=p.device)
            group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
            if group["preconditioner"] == "rmsprop":
                state["square_avg"] = torch.zeros_like(state["anchor"])
        return state

    @staticmethod
    def _mask(tensors: list[torch.Tensor], states: list[dict]) -> None:
        for t, s in zip(tensors, states):
            if s["mask"] is not None:
                t.mul_(s["mask"])

    def _noise(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = [p.numel() for p in params]
        flat = torch.randn(sum(sizes), generator=self.generator, device=params[0].device, dtype=torch.float32)
        return [chunk.view(p.shape) for chunk, p in zip(flat.split(sizes), params)]

    @staticmethod
    def _log_accept(states, drift, precond, inv_g, eps: float) -> torch.Tensor | None:
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
            rev_energy = sq.sum() / (2 * eps)
            du = -(delta * (d_prev + d_now)).sum() / 2
            terms.append(du - rev_energy)
        # log q(w|w') carries -½·Σ log G' of the reverse proposal's covariance εG'
        rev_log_det = SGLD._half_log_det(precond, states) if precond is not None else 0.0
        return torch.stack(terms).sum() + fwd_energy - rev_log_det

    @staticmethod
    def _half_log_det(precond: list[torch.Tensor], states: list[dict]) -> torch.Tensor:
        """½·Σ log G over the moving elements: the log-determinant part of a proposal's density."""
        logs = torch._foreach_log(precond)
        SGLD._mask(logs, states)
        return 0.5 * torch.stack([t.sum() for t in logs]).sum()
