"""The closed-form learning coefficients the estimator is judged against
(testbeds/theory.py): known values, cross-checks between formulas, and
the bounds every learning coefficient obeys. Pure arithmetic, fast."""
import itertools
import math

import pytest

from testbeds.theory import deep_linear_network, normal_crossing, reduced_rank_regression, regular


def test_regular_model_is_half_the_dimension():
    assert regular(10) == 5.0
    assert regular(1) == 0.5


@pytest.mark.parametrize(
    "k,h,expected",
    [
        ([2], None, 1 / 4),  # K = w^4
        ([3], None, 1 / 6),  # K = w^6
        ([1, 2], None, 1 / 4),  # K = w1^2 w2^4: the steeper factor decides
        ([1, 1], None, 1 / 2),  # K = w1^2 w2^2
        ([1, 2], [2, 0], 1 / 4),  # prior |w1|^2 moves (h+1)/2k of w1 to 3/2; w2 still decides
        ([1, 2], [0, 3], 1 / 2),  # prior |w2|^3 lifts w2 to 4/4 = 1; w1 now decides
        ([2, 0], None, 1 / 4),  # a variable absent from K (k = 0) does not count
    ],
)
def test_normal_crossing(k, h, expected):
    assert normal_crossing(k, h) == pytest.approx(expected)


@pytest.mark.parametrize(
    "m,h,n,r,expected",
    [
        (3, 3, 3, 3, 4.5),  # full rank: the GL(3) orbit leaves 18 - 9 = 9 free directions, λ = 9/2
        (2, 1, 2, 0, 1.0),  # y = b aᵀx at 0: K = |a|²|b|², λ = min over two 2-d radii = 2/2
        (1, 1, 1, 0, 0.5),  # y = b·a·x at 0: K = a²b², λ = 1/2
        (1, 1, 1, 1, 0.5),  # y = b·a·x at ab ≠ 0: one regular direction of the product
        (4, 6, 2, 1, 4.0),  # m + n < h + r: the product is regular, λ = mn/2
    ],
)
def test_reduced_rank_regression_known_values(m, h, n, r, expected):
    assert reduced_rank_regression(m, h, n, r) == pytest.approx(expected)


def test_deep_linear_network_checks_from_design():
    assert deep_linear_network([5, 3, 5], 0) == pytest.approx(6.5)
    assert deep_linear_network([10, 20, 20, 10], 5) == pytest.approx(50.0)


@pytest.mark.parametrize("m,h,n", list(itertools.product(range(1, 9), repeat=3)))
def test_two_layer_dln_is_reduced_rank_regression(m, h, n):
    for r in range(min(m, h, n) + 1):
        assert deep_linear_network([m, h, n], r) == pytest.approx(reduced_rank_regression(m, h, n, r)), (m, h, n, r)


@pytest.mark.parametrize(
    "widths",
    [[5, 3, 5], [4, 7, 2, 6], [10, 20, 20, 10], [3, 8, 8, 8, 3], [6, 2, 9, 4, 5, 7], [100, 200, 200, 200, 100]],
)
def test_dln_is_between_its_rank_bound_and_d_over_2(widths):
    d = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    for r in range(min(widths) + 1):
        lam = deep_linear_network(widths, r)
        # the rank-r matrices near the true product form a manifold of dimension
        # r(H_0 + H_L - r): at least that many directions cost loss quadratically
        assert r * (widths[0] + widths[-1] - r) / 2 - 1e-9 <= lam <= d / 2 + 1e-9, (widths, r, lam)


@pytest.mark.parametrize("widths", [[4, 7, 2, 6], [6, 2, 9, 4, 5, 7], [3, 8, 5, 8, 3]])
def test_dln_depends_on_hidden_widths_only_as_a_set(widths):
    """Aoyagi's λ uses the sorted M_i and H_0 + H_L: permuting hidden layers leaves it unchanged."""
    hidden = widths[1:-1]
    for r in range(min(widths) + 1):
        values = {round(deep_linear_network([widths[0], *p, widths[-1]], r), 9) for p in itertools.permutations(hidden)}
        assert len(values) == 1, (widths, r, values)


def test_dln_with_full_rank_width_is_regular_in_the_product():
    # every layer at width r: the product is an invertible r×r matrix near w*,
    # and the network is the (redundant) parametrisation of it: λ = r²/2
    for r in range(1, 6):
        assert deep_linear_network([r] * 4, r) == pytest.approx(r * r / 2)


def test_dln_rejects_bad_shapes():
    with pytest.raises(ValueError, match="hidden layer"):
        deep_linear_network([3, 3], 1)
    with pytest.raises(ValueError, match="rank"):
        deep_linear_network([3, 2, 3], 3)
    with pytest.raises(ValueError, match="rank"):
        deep_linear_network([3, 2, 3], -1)


def test_values_are_finite_and_positive():
    for widths in ([2, 2, 2], [7, 1, 7], [1, 9, 9, 1]):
        for r in range(min(widths) + 1):
            lam = deep_linear_network(widths, r)
            assert math.isfinite(lam) and lam > 0
