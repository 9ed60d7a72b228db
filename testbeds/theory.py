"""Known learning coefficients: the ground truths the estimator is tested against."""
from __future__ import annotations

import math
from itertools import combinations
from typing import Sequence


def regular(d: int) -> float:
    """A regular (non-singular) model with d parameters: λ = d/2."""
    return d / 2


def normal_crossing(k: Sequence[int], h: Sequence[int] | None = None) -> float:
    """K(w) = Π w_i^(2k_i) with prior Π |w_i|^(h_i): λ = min_i (h_i + 1)/(2k_i)."""
    h = h or [0] * len(k)
    return min((hi + 1) / (2 * ki) for ki, hi in zip(k, h) if ki > 0)


def reduced_rank_regression(m: int, h: int, n: int, r: int) -> float:
    """Aoyagi & Watanabe (2005): y = B·A·x with A: m→h, B: h→n, true rank r."""
    if n + h < m + r:
        return (h * n - h * r + m * r) / 2
    if m + h < n + r:
        return (h * m - h * r + n * r) / 2
    if m + n < h + r:
        return m * n / 2
    base = 2 * (h + r) * (m + n) - (m - n) ** 2 - (h + r) ** 2
    return (base + ((m + h + n + r) % 2)) / 8


def deep_linear_network(widths: Sequence[int], r: int) -> float:
    """Aoyagi (2024): a deep linear network with layer widths H_0..H_L (input H_0,
    output H_L) at a true product of rank r."""
    if len(widths) < 3:
        raise ValueError("a deep linear network needs at least one hidden layer: widths H_0, H_1, ..., H_L")
    if not 0 <= r <= min(widths):
        raise ValueError(f"rank {r} must be in [0, {min(widths)}]")
    m = sorted(w - r for w in widths)
    for size in range(2, len(m) + 1):
        s_set, rest = m[:size], m[size:]
        ell = size - 1
        s = sum(s_set)
        if rest and not (max(s_set) < min(rest) and s < ell * min(rest)):
            continue
        if s >= ell * max(s_set):
            break
    else:  # pragma: no cover - the full set always satisfies the conditions
        raise AssertionError(widths)
    big_k = math.ceil(s / ell)
    a = s - (big_k - 1) * ell
    cross = sum(x * y for x, y in combinations(s_set, 2))
    return (-r * r + r * (widths[0] + widths[-1])) / 2 + a * (ell - a) / (4 * ell) - ell * (ell - 1) / 4 * (s / ell) ** 2 + cross / 2
