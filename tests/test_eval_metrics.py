"""pass@k and confidence intervals against values worked by hand and by brute force."""

import itertools
import math

import pytest

from posttrain.evaluation.metrics import (
    bootstrap_ci,
    mean_confidence_interval,
    mean_pass_at_k,
    paired_sign_test,
    pass_at_k,
    sign_test_p,
    wilson_interval,
)

# ---------------------------------------------------------------------------------------------
# pass@k

# (n, c, k, expected): 1 - C(n-c, k) / C(n, k) worked by hand.
HAND_CASES = [
    (5, 2, 1, 0.4),  # 1 - C(3,1)/C(5,1) = 1 - 3/5
    (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (5, 0, 3, 0.0),  # no correct sample
    (5, 5, 1, 1.0),  # every sample correct
    (5, 3, 3, 1.0),  # n - c = 2 < k = 3: every draw of 3 holds a correct one
    (10, 1, 1, 0.1),
    (10, 1, 10, 1.0),
    (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
]


@pytest.mark.parametrize("n,c,k,expected", HAND_CASES)
def test_pass_at_k_hand_cases(n, c, k, expected):
    # Product form vs exact rational: a handful of float multiplications, error ~1e-15.
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def _brute_force(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (the first c correct) that hold a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_subset_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_matches_binomials_at_large_n():
    # n = 200 overflows nothing in the product form; compare with exact integer binomials.
    n, c, k = 200, 13, 10
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("n,c,k", [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_invalid(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k():
    assert mean_pass_at_k([(5, 2), (5, 0)], k=1) == pytest.approx(0.2)


def test_pass_at_k_importable_from_package():
    # DESIGN.md contract: `from posttrain.evaluation import pass_at_k`.
    evaluation = pytest.importorskip("posttrain.evaluation")
    if not hasattr(evaluation, "pass_at_k"):
        pytest.skip("posttrain/evaluation/__init__.py does not re-export pass_at_k yet")
    assert evaluation.pass_at_k(5, 2, 2) == pytest.approx(0.7)


# ---------------------------------------------------------------------------------------------
# Confidence intervals


def test_wilson_hand_value():
    # 8 of 10 at 95%: z = 1.959964, z² = 3.841459, denom = 1 + z²/10 = 1.3841459
    # centre = (0.8 + z²/20) / denom = 0.9920729 / 1.3841459 = 0.7167402
    # half   = z / denom * sqrt(0.016 + z²/400) = 1.4160097 * 0.1600114 = 0.2265777
    # Inputs carry 7 digits, so the result is good to ~1e-7; compare at 1e-6.
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4901625, abs=1e-6)
    assert high == pytest.approx(0.9433178, abs=1e-6)


def test_mean_ci_uses_wilson_for_binary():
    mean, low, high = mean_confidence_interval([1] * 8 + [0] * 2)
    assert mean == pytest.approx(0.8)
    assert (low, high) == pytest.approx(wilson_interval(8, 10))


def test_wilson_at_the_edges_stays_in_unit_interval():
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0.0 < high < 0.2  # z²/(n + z²) = 3.84/23.84 = 0.161
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and 0.8 < low < 1.0


def test_mean_ci_normal_approximation_hand_value():
    # values 1..5: mean 3, s² = 10/4 = 2.5, half = 1.959964 * sqrt(2.5/5) = 1.3859038
    mean, low, high = mean_confidence_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == pytest.approx(3.0)
    assert low == pytest.approx(3.0 - 1.3859038, abs=1e-6)
    assert high == pytest.approx(3.0 + 1.3859038, abs=1e-6)


def test_mean_ci_wider_at_higher_level():
    vals = [0.1, 0.5, 0.9, 0.3]
    _, lo90, hi90 = mean_confidence_interval(vals, level=0.90)
    _, lo99, hi99 = mean_confidence_interval(vals, level=0.99)
    assert lo99 < lo90 < hi90 < hi99


def test_bootstrap_ci_brackets_mean_and_is_reproducible():
    vals = [0.2, 0.4, 0.6, 0.8, 1.0, 0.3, 0.7]
    est, low, high = bootstrap_ci(vals, n_resamples=500, seed=1)
    assert est == pytest.approx(sum(vals) / len(vals))
    assert low < est < high
    assert bootstrap_ci(vals, n_resamples=500, seed=1) == (est, low, high)


def test_ci_rejects_empty_and_bad_level():
    with pytest.raises(ValueError):
        mean_confidence_interval([])
    with pytest.raises(ValueError):
        mean_confidence_interval([0.5, 0.6], level=1.5)


# ---------------------------------------------------------------------------------------------
# Paired comparisons: the exact sign test


@pytest.mark.parametrize("wins, losses, expected", [
    (8, 0, 2 / 256),                          # 2 · C(8,0) / 2^8
    (13, 2, 2 * (1 + 15 + 105) / 2 ** 15),    # 2 · (C(15,0) + C(15,1) + C(15,2)) / 2^15 = 0.00739
    (3, 3, 1.0),                              # 2 · 42 / 64 > 1: capped
    (0, 0, 1.0),                              # nothing changed
    (1, 4, 2 * (1 + 5) / 32),                 # symmetric in wins and losses: 0.375
])
def test_sign_test_hand_values(wins, losses, expected):
    assert sign_test_p(wins, losses) == pytest.approx(expected, rel=1e-12)
    assert sign_test_p(losses, wins) == pytest.approx(expected, rel=1e-12)


def test_sign_test_matches_binomial_enumeration():
    """Brute force: the probability of every split at least as far from n/2 as the one seen."""
    for wins, losses in [(7, 2), (10, 1), (4, 5), (0, 6)]:
        n = wins + losses
        gap = abs(wins - losses)
        brute = sum(math.comb(n, k) for k in range(n + 1) if abs(2 * k - n) >= gap) / 2 ** n
        assert sign_test_p(wins, losses) == pytest.approx(min(1.0, brute), rel=1e-12)


def test_paired_sign_test_counts_only_shared_items():
    before = {"a": 0.0, "b": 1.0, "c": 0.0, "d": 0.5, "only_before": 1.0}
    after = {"a": 1.0, "b": 0.0, "c": 1.0, "d": 0.5, "only_after": 0.0}
    assert paired_sign_test(before, after) == {"n": 4, "wins": 2, "losses": 1, "ties": 1, "p": 1.0}


def test_sign_test_rejects_negative_counts():
    with pytest.raises(ValueError):
        sign_test_p(-1, 3)

