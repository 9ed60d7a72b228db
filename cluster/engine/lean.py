"""Memory-lean localized SGLD for large models on one device (`estimate_llc(..., memory="lean")`).

The standard path on a bfloat16 checkpoint upcasts the moving weights: per moving
element it holds fp32 weights (4 B), an fp32 w* (4 B), an fp32 gradient (4 B) and
the bf16 copy of the weight that autocast keeps for the backward pass (2 B): 14 B.
The lean path keeps, per moving element:

    p   bf16  the weights the forward reads              2 B
    w*  bf16  the checkpoint itself (exact, not rounded)  2 B
    δ   fp32  w - w*, where the SGLD updates accumulate   4 B
    ∇   bf16  the gradient of p                           2 B   → 10 B

w = w* + δ keeps fp32 resolution in δ (updates of size ε are far below bf16's
resolution of w), and after every step p = bf16(w* + δ): the forward sees the same
bf16 rounding of w that autocast gives the standard path. What differs is the
gradient, rounded to bf16 (relative error 2⁻⁹), and the noise stream (one draw per
tensor). The update runs tensor by tensor, so its fp32 temporaries are bounded by
the largest tensor, not the model. MALA is not tracked here: it would keep two fp32
copies of the moving weights.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from cluster.engine.sgld import SGLD


class LeanSGLD(SGLD):
    """SGLD with the same update as `SGLD` on w = w* + δ; see the module docstring for the memory."""

    def __init__(self, params: Iterable, **kwargs):
        kwargs["track_mala"] = False
        super().__init__(params, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim API
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            masks = group["masks"] or [None] * len(group["params"])
            live = [(p, m) for p, m in zip(group["params"], masks) if p.grad is not None]
            if not live:
                continue
            eps, nbeta, gamma, alpha = group["lr"], group["nbeta"], group["gamma"], group["alpha"]
            rmsprop = group["preconditioner"] == "rmsprop"
            first = self._lean_state(live[0][0], live[0][1], rmsprop)
            first["rms_steps"] = first.get("rms_steps", 0) + 1
            for p, mask in live:
                s = self._lean_state(p, mask, rmsprop)
                grad = p.grad.float()
                drift = s["delta"].mul(gamma).add_(grad, alpha=nbeta)  # nβ·g + γ·(w - w*)
                (noise,) = self._noise([p])  # ξ for this tensor only
                if rmsprop:  # G = 1/(√V̂ + a), V̂ bias-corrected as in SGLD
                    v = s["square_avg"].mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
                    inv_g = v.sqrt().mul_(1 / math.sqrt(1 - alpha ** first["rms_steps"])).add_(group["eps"])
                    drift.div_(inv_g)
                    noise.div_(inv_g.sqrt_())
                update = drift.mul_(-eps / 2).add_(noise, alpha=math.sqrt(eps))
                if s["mask"] is not None:
                    update.mul_(s["mask"])
                s["delta"].add_(update)
                p.copy_(s["anchor"].float().add_(s["delta"]))  # rounds w to p's dtype
        self.last_log_accept = None
        return loss

    def _lean_state(self, p: torch.Tensor, mask: torch.Tensor | None, rmsprop: bool) -> dict:
        state = self.state[p]
        if "anchor" not in state:
            state["anchor"] = p.detach().clone()  # in p's own dtype: w* as loaded
            state["delta"] = torch.zeros_like(p, dtype=torch.float32)
            state["mask"] = None if mask is None else mask.to(device=p.device)
            if rmsprop:
                state["square_avg"] = torch.zeros_like(p, dtype=torch.float32)
        return state
