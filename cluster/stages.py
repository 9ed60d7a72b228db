"""Candidate developmental-stage boundaries on an LLC trajectory λ̂(t) (docs/trajectories.md).

    boundaries = find_boundaries(steps, llc, llc_sem)
    # [{"step", "step_low", "step_high", "confidence", "slope_before", "slope_after", "delta_chi2", ...}]

Method (Hoogland et al. 2024 read stages off changes of slope of λ̂ in log t):
  x = log10(t + 1); each point weighs 1/σ², σ = the estimate's standard error (floored at
  `sigma_floor` × the curve's spread, so one overconfident point cannot dominate).
  A point without σ takes the others' median; a curve without any, the scatter about one line.
  1. Candidates: ruptures' binary segmentation with the piecewise linear-regression cost
     (CostLinear on rows [y/σ, 1/σ, x/σ], i.e. weighted least squares: the cost of a segment
     is its χ² about its own line), up to `max_boundaries`, segments of ≥ `min_size` points.
  2. Each candidate is tested against its neighbours: on the points between the previous and
     the next candidate, the χ² of one line minus the χ² of two lines split there (Δχ², two
     extra parameters: a change of slope and of level) is χ²(2)-distributed when there is no
     change and σ is right. p = Bonferroni(χ²₂ tail, the number of split positions the segment
     allows); confidence = 1 - p. Candidates below `min_confidence` are dropped one at a
     time, weakest first, and the rest re-tested.
  A wiggle that stays inside the error bars gives Δχ² ≈ 2 and confidence ≈ 0: not a stage.
  The boundary's `step` is where the two fitted lines cross, clipped to the interval between
  the checkpoints either side (`step_low`, `step_high`); checkpoints bound its resolution.

Pure numpy/scipy + ruptures: the front end calls it when it assembles a cached trajectory.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

DEFAULTS: dict[str, Any] = {
    "method": "binseg-linear+chi2",
    "axis": "log10(step + 1)",
    "uncertainty": "llc_sem (standard error of the mean over chains)",
    "min_size": 3,  # points on each side of a boundary
    "max_boundaries": 4,
    "min_confidence": 0.95,
    "sigma_floor": 0.01,  # σ ≥ this × (max - min of λ̂), and > 0
    "library": "ruptures",
}


def _fit(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
    """Weighted least-squares line y = a + b·x → (a, b, χ²)."""
    W = w.sum()
    xm, ym = (w * x).sum() / W, (w * y).sum() / W
    sxx = (w * (x - xm) ** 2).sum()
    b = (w * (x - xm) * (y - ym)).sum() / sxx if sxx > 0 else 0.0
    a = ym - b * xm
    chi2 = float((w * (y - a - b * x) ** 2).sum())
    return float(a), float(b), chi2


def _test(x: np.ndarray, y: np.ndarray, w: np.ndarray, lo: int, hi: int, b: int, min_size: int) -> dict[str, Any]:
    """The split at index b of points [lo, hi) against one line over them."""
    from scipy.stats import chi2 as chi2_dist

    _, _, one = _fit(x[lo:hi], y[lo:hi], w[lo:hi])
    a1, s1, c1 = _fit(x[lo:b], y[lo:b], w[lo:b])
    a2, s2, c2 = _fit(x[b:hi], y[b:hi], w[b:hi])
    delta = max(0.0, one - c1 - c2)
    positions = max(1, (hi - lo) - 2 * min_size + 1)
    p = min(1.0, float(chi2_dist.sf(delta, 2)) * positions)
    # Where the lines cross, inside the gap between the checkpoints either side of the split.
    xc = (a2 - a1) / (s1 - s2) if s1 != s2 else (x[b - 1] + x[b]) / 2
    xc = float(min(max(xc, x[b - 1]), x[b])) if math.isfinite(xc) else float((x[b - 1] + x[b]) / 2)
    return {"index": b, "x": xc, "delta_chi2": delta, "p_value": p, "confidence": 1.0 - p,
            "slope_before": s1, "slope_after": s2}


def _candidates(x: np.ndarray, y: np.ndarray, sigma: np.ndarray, min_size: int, max_boundaries: int) -> list[int]:
    import ruptures as rpt

    n = len(x)
    k = min(max_boundaries, n // min_size - 1)
    if k < 1:
        return []
    signal = np.column_stack([y / sigma, 1.0 / sigma, x / sigma])
    try:
        bkps = rpt.Binseg(model="linear", min_size=min_size, jump=1).fit(signal).predict(n_bkps=k)
    except rpt.exceptions.BadSegmentationParameters:
        return []
    return sorted(b for b in bkps if min_size <= b <= n - min_size)


def find_boundaries(steps: Sequence[float], llc: Sequence[float], sem: Sequence[float], **params: Any
                    ) -> list[dict[str, Any]]:
    """Stage boundaries of one λ̂(t) curve (see the module doc; `params` override DEFAULTS)."""
    p = {**DEFAULTS, **params}
    min_size, max_b, min_conf = int(p["min_size"]), int(p["max_boundaries"]), float(p["min_confidence"])
    t = np.asarray(steps, dtype=float)
    y = np.asarray(llc, dtype=float)
    s = np.asarray(sem, dtype=float)
    keep = np.isfinite(t) & np.isfinite(y)
    t, y, s = t[keep], y[keep], s[keep]
    order = np.argsort(t)
    t, y, s = t[order], y[order], s[order]
    if len(t) < 2 * min_size:
        return []
    spread = float(y.max() - y.min())
    floor = max(float(p["sigma_floor"]) * spread, 1e-12)
    x = np.log10(t + 1.0)
    # A point without an error bar borrows the median of the others; a curve without any, the scatter
    # about one line (then only a change far larger than that scatter is a stage).
    good = np.isfinite(s) & (s > 0)
    if good.any():
        fill = float(np.median(s[good]))
    else:
        _, _, chi2 = _fit(x, y, np.ones_like(y))
        fill = math.sqrt(chi2 / max(1, len(y) - 2))
    s = np.where(np.isfinite(s) & (s > 0), s, fill)
    s = np.maximum(s, floor)
    w = 1.0 / s ** 2
    cands = _candidates(x, y, s, min_size, max_b)
    while cands:
        edges = [0, *cands, len(x)]
        tests = [_test(x, y, w, edges[j], edges[j + 2], cands[j], min_size) for j in range(len(cands))]
        weakest = min(range(len(tests)), key=lambda j: tests[j]["confidence"])
        if tests[weakest]["confidence"] >= min_conf:
            break
        cands.pop(weakest)
    else:
        return []
    out = []
    for r in tests:
        b = r["index"]
        out.append({
            "step": int(round(10 ** r["x"] - 1.0)), "step_low": int(t[b - 1]), "step_high": int(t[b]),
            "confidence": round(r["confidence"], 6), "p_value": r["p_value"], "delta_chi2": r["delta_chi2"],
            "slope_before": r["slope_before"], "slope_after": r["slope_after"],
        })
    return out
