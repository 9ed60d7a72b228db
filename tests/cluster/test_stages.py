"""cluster.stages: stage boundaries on λ̂(t) curves that stand out of their error bars."""
from __future__ import annotations

import numpy as np
import pytest

from cluster.stages import DEFAULTS, find_boundaries

STEPS = np.unique(np.round(np.logspace(1, 4, 16)))
X = np.log10(STEPS + 1)


def test_finds_a_planted_change_of_slope_in_log_t():
    rng = np.random.default_rng(0)
    kink = 2.5  # log10(t + 1): t ≈ 315
    y = np.where(X < kink, 5 + X, 5 + kink + 6 * (X - kink)) + rng.normal(0, 0.3, X.size)
    found = find_boundaries(STEPS, y, np.full(X.size, 0.3))
    assert len(found) == 1
    b = found[0]
    assert b["confidence"] > 0.99 and b["slope_after"] > b["slope_before"]
    assert b["step_low"] <= b["step"] <= b["step_high"]
    assert abs(np.log10(b["step"] + 1) - kink) < 0.3  # within one checkpoint spacing or so


@pytest.mark.parametrize("seed", range(5))
def test_no_boundary_on_a_flat_noisy_curve(seed):
    rng = np.random.default_rng(seed)
    y = 10 + rng.normal(0, 0.3, X.size)
    assert find_boundaries(STEPS, y, np.full(X.size, 0.3)) == []


def test_a_wiggle_inside_wide_error_bars_is_not_a_stage():
    y = np.where(X < 2.5, 5 + X, 5 + 2.5 + 1.6 * (X - 2.5))  # a small bend, no noise...
    assert find_boundaries(STEPS, y, np.full(X.size, 2.0)) == []  # ...inside error bars of ±2
    assert find_boundaries(STEPS, y, np.full(X.size, 0.01)) != []  # and the same bend with tight ones


def test_false_positive_rate_is_small():
    rng = np.random.default_rng(1)
    hits = sum(bool(find_boundaries(STEPS, 3 + 0.5 * X + rng.normal(0, 0.2, X.size), np.full(X.size, 0.2)))
               for _ in range(100))
    assert hits <= 10  # min_confidence 0.95 per candidate


def test_short_or_nan_curves_and_parameters():
    assert find_boundaries([1, 2, 3], [1.0, 2.0, 3.0], [0.1] * 3) == []
    y = [1.0, np.nan, 1.0, 1.1, 0.9, 1.0, 1.0]
    assert find_boundaries(range(7), y, [np.nan] * 7) == []
    assert DEFAULTS["min_confidence"] == 0.95 and DEFAULTS["library"] == "ruptures"
