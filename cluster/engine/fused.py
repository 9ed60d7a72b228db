"""The SGLD update in one pass per tensor, eager or through `torch.compile`.

Per moving tensor, with m the restriction mask (1 where the element moves):

    d = γ·(w - w*) + nβ·g                     (the drift)
    plain:    u = -(ε/2)·d + √ε·ξ
    RMSprop:  V ← α·V + (1-α)·g²,  1/G = √V·b_t + a,  u = -(ε/2)·G·d + √ε·√G·ξ
    w ← w + m·u

b_t = 1/√(1 - α^t) is the bias correction of V. This reads w, w*, g, ξ (and V) once
and writes w (and V) once, where the `_foreach` reference (cluster.engine.sgld) makes
about seven passes with temporaries. The constants live in one small device tensor
(`scalars`), so changing ε or the bias correction neither recompiles nor synchronises.
The noise ξ is still drawn by `torch.randn` from the chain's generator, so the noise
stream, and with it the chain, is the reference's up to rounding.
"""
from __future__ import annotations

import functools
import math

import torch

# positions in the scalars tensor
HALF_EPS, SQRT_EPS, GAMMA, NBETA, ALPHA, BIAS, REG = range(7)


def scalars(*, eps: float, nbeta: float, gamma: float, alpha: float = 0.99, reg: float = 1e-5,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """The update's constants as one fp32 device tensor (see the positions above)."""
    values = [-eps / 2, math.sqrt(eps), gamma, nbeta, alpha, 1.0, reg]
    return torch.tensor(values, dtype=torch.float32, device=device)


def sgld_update_(params, anchors, grads, noises, masks, s, square_avgs=None) -> None:
    """Plain SGLD, in place on `params` (lists aligned; masks entries None or bool tensors)."""
    for p, a, g, n, m in zip(params, anchors, grads, noises, masks):
        d = (p - a) * s[GAMMA] + g * s[NBETA]
        u = d * s[HALF_EPS] + n * s[SQRT_EPS]
        if m is not None:
            u = u * m
        p.add_(u)


def rmsprop_sgld_update_(params, anchors, grads, noises, masks, s, square_avgs) -> None:
    """RMSprop-preconditioned SGLD, in place on `params` and `square_avgs`."""
    for p, a, g, n, m, v in zip(params, anchors, grads, noises, masks, square_avgs):
        v_new = v * s[ALPHA] + g * g * (1 - s[ALPHA])
        v.copy_(v_new)
        precond = 1 / (torch.sqrt(v_new) * s[BIAS] + s[REG])
        d = (p - a) * s[GAMMA] + g * s[NBETA]
        u = d * precond * s[HALF_EPS] + n * torch.sqrt(precond) * s[SQRT_EPS]
        if m is not None:
            u = u * m
        p.add_(u)


def compile_available() -> tuple[bool, str]:
    """Whether torch.compile can build kernels here (a C++ compiler on CPU, Triton on CUDA)."""
    try:
        import torch._inductor.config  # noqa: F401
    except Exception as exc:  # pragma: no cover - very old or broken torch
        return False, f"torch inductor is not importable: {exc}"
    if torch.cuda.is_available():
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "CUDA without triton"
        return True, "cuda + triton"
    import shutil

    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    return (cxx is not None), (f"cpu, C++ compiler {cxx}" if cxx else "cpu without a C++ compiler")


@functools.lru_cache(maxsize=None)
def update_function(*, compiled: bool, rmsprop: bool):
    """The fused update, eager or compiled; one compiled function per kind per process, so
    every chain of a worker reuses its kernels (recompiled only for new tensor shapes)."""
    fn = rmsprop_sgld_update_ if rmsprop else sgld_update_
    if not compiled:
        return fn
    return torch.compile(fn, fullgraph=True, dynamic=False)
