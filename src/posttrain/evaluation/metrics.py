"""Evaluation statistics: pass@k and confidence intervals.

Pure functions on numbers; no I/O.

- `pass_at_k(n, c, k)`: the unbiased pass@k estimator of Chen et al. (2021), "Evaluating Large
  Language Models Trained on Code", section 2.1, eq. 1, in the numerically stable product form of
  the paper's Figure 3 (https://github.com/openai/human-eval, `human_eval/evaluation.py`,
  `estimate_pass_at_k`).
- `mean_confidence_interval(values, level)`: mean and a two-sided interval. 0/1 values get the
  Wilson score interval; anything else gets the normal approximation mean ± z·s/√n.
- `bootstrap_ci(values, statistic, level)`: percentile bootstrap for any statistic.
- `paired_sign_test(before, after)`: wins, losses, ties and the exact two-sided sign test of two
  runs on the same items (McNemar's exact test when the scores are 0/1).

Example: 5 samples of one problem, 2 correct: `pass_at_k(5, 2, 1) == 0.4`,
`pass_at_k(5, 2, 2) == 1 - C(3, 2) / C(5, 2) == 0.7`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from statistics import NormalDist

__all__ = ["pass_at_k", "mean_pass_at_k", "mean_confidence_interval", "wilson_interval", "bootstrap_ci",
           "sign_test_p", "paired_sign_test"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples, drawn without replacement from n samples of
    which c are correct, is correct:

        pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

    The product form never builds the (huge) binomials. When n - c < k every draw of k holds a
    correct sample, so the value is exactly 1.0.
    """
    if not (n >= 1 and 0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(samples: Sequence[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems, each given as (n, c)."""
    if not samples:
        raise ValueError("mean_pass_at_k needs at least one (n, c) pair")
    return sum(pass_at_k(n, c, k) for n, c in samples) / len(samples)


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1); got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927):

        centre = (p + z²/2n) / (1 + z²/n)
        half   = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²)

    Unlike the normal (Wald) interval it stays inside [0, 1] and is not empty at p = 0 or 1.
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs n > 0 and 0 <= successes <= n; got {successes}/{n}")
    z = _z(level)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of `values` at confidence `level`.

    - All values 0 or 1 (accuracy, pass@1 per problem): the Wilson score interval around the
      proportion. The returned mean is the plain proportion, not the Wilson centre.
    - Otherwise: the normal approximation mean ± z · s / sqrt(n), with s the sample standard
      deviation (n - 1 denominator). No Student-t correction, so for n below ~30 the interval is
      somewhat too narrow; use `bootstrap_ci` there if that matters.

    A single value gives a zero-width interval in the normal case.
    """
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("mean_confidence_interval needs at least one value")
    mean = sum(values) / n
    if all(v in (0.0, 1.0) for v in values):
        low, high = wilson_interval(int(sum(values)), n, level)
        return mean, low, high
    if n == 1:
        return mean, mean, mean
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = _z(level) * math.sqrt(var / n)
    return mean, mean - half, mean + half


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[Sequence[float]], float] | None = None,
    level: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(statistic, low, high) by the percentile bootstrap: resample `values` with replacement
    `n_resamples` times, and take the (1-level)/2 and (1+level)/2 quantiles of the statistic.
    `statistic` defaults to the mean. Seeded, so the result is reproducible.
    """
    values = list(values)
    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    _z(level)  # validates level
    stat = statistic or (lambda xs: sum(xs) / len(xs))
    rng = random.Random(seed)
    n = len(values)
    draws = sorted(stat([values[rng.randrange(n)] for _ in range(n)]) for _ in range(n_resamples))
    lo_i = int(math.floor((1 - level) / 2 * (n_resamples - 1)))
    hi_i = int(math.ceil((1 + level) / 2 * (n_resamples - 1)))
    return stat(values), draws[lo_i], draws[hi_i]


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided sign test: the probability, with n = wins + losses items that changed and
    each change equally likely either way, of a split at least as uneven as the one seen,

        p = min(1, 2 · Σ_{i ≤ min(wins, losses)} C(n, i) / 2ⁿ),

    and 1.0 when nothing changed. On 0/1 scores the changed items are McNemar's discordant pairs,
    so this is McNemar's exact test (McNemar 1947; the binomial form, no continuity correction).
    Example: 8 wins, 0 losses → 2/256 = 0.0078."""
    if wins < 0 or losses < 0:
        raise ValueError(f"sign test needs counts >= 0; got wins={wins}, losses={losses}")
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2.0 * tail / 2 ** n)


def paired_sign_test(before: dict, after: dict) -> dict:
    """Compare two runs' per-item scores (``{item id: score}``) on the items both scored: ``n``
    paired items, ``wins`` (after > before), ``losses``, ``ties`` and the sign test's ``p``."""
    common = [k for k in before if k in after]
    wins = sum(after[k] > before[k] for k in common)
    losses = sum(after[k] < before[k] for k in common)
    return {"n": len(common), "wins": wins, "losses": losses, "ties": len(common) - wins - losses,
            "p": sign_test_p(wins, losses)}
