"""Tests of significance and confidence intervals, all from scipy (method.md §5).

Wilson intervals for accuracies, exact McNemar for method vs dense on the same items, a t interval
for paired accuracy differences, and one-sided bounds with their power for the LiteStage search's
decisions (the speedup's bootstrap lives in ``timing``). No formula is written out here: each function only shapes its inputs for scipy and its outputs for JSON (plain floats, ``nan``
where a statistic is undefined). scipy is imported inside the functions so that importing this module
(through ``metrics``) stays cheap for commands that never compute a statistic.
"""
from __future__ import annotations

import bisect
import functools
import math
from typing import Sequence

NAN = float("nan")


@functools.lru_cache(maxsize=65536)  # merged answer counts ask for the same (k, n) at every look
def wilson_ci95(k: int, n: int) -> tuple[float, float]:
    """Wilson score 95% interval for ``k`` successes out of ``n``; ``(nan, nan)`` when ``n == 0``."""
    if n == 0:
        return NAN, NAN
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def accuracy_ci95(correct: Sequence[bool]) -> tuple[float, tuple[float, float]]:
    """``(accuracy, (low, high))`` with the Wilson 95% interval; ``(nan, (nan, nan))`` when empty.

    Wilson rather than the normal interval: it stays inside [0, 1] and behaves at 0% / 100% and small n.
    """
    return accuracy_ci95_of_counts(sum(1 for c in correct if c), len(correct))


def accuracy_ci95_of_counts(k: int, n: int) -> tuple[float, tuple[float, float]]:
    """``accuracy_ci95`` of ``k`` correct items out of ``n`` (counts summed over chunks, say)."""
    if n == 0:
        return NAN, (NAN, NAN)
    p = k / n
    low, high = wilson_ci95(k, n)
    # Rounding can put a bound a hair past the estimate at p = 0 or 1; the interval must contain it.
    return p, (min(low, p), max(high, p))


def mcnemar_exact_p(method_correct: Sequence[bool], dense_correct: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value: a binomial test (p = 0.5) on the discordant pairs.

    ``b`` = items dense got right and the method got wrong, ``c`` = the reverse. With no discordant
    pair the two agree everywhere and the p-value is 1.0. Raises ``ValueError`` when the lengths differ.
    """
    if len(method_correct) != len(dense_correct):
        raise ValueError(
            f"McNemar needs the same items: {len(method_correct)} method vs {len(dense_correct)} dense"
        )
    b = sum(1 for m, d in zip(method_correct, dense_correct) if d and not m)
    c = sum(1 for m, d in zip(method_correct, dense_correct) if m and not d)
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)


def paired_difference(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Compare two methods on the same items: mean of ``a_i - b_i`` and its 95% t interval.

    The interval is scipy's one-sample t interval on the paired differences, clipped to [-1, 1].
    With n < 2 it is ``(nan, nan)``; when every difference is equal it collapses to the point.

    Returns a dict with keys ``mean_diff``, ``ci95`` (tuple), ``n``, ``a_only`` (items only ``a``
    got right) and ``b_only``. Raises ``ValueError`` when the lengths differ.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference needs the same items: len(a)={len(a)} != len(b)={len(b)}")
    n = len(a)
    diffs = [int(bool(x)) - int(bool(y)) for x, y in zip(a, b)]
    a_only = sum(1 for d in diffs if d > 0)
    b_only = sum(1 for d in diffs if d < 0)
    if n == 0:
        return {"mean_diff": NAN, "ci95": (NAN, NAN), "n": 0, "a_only": 0, "b_only": 0}
    mean = sum(diffs) / n
    if n < 2:
        ci = (NAN, NAN)
    elif len(set(diffs)) == 1:
        ci = (mean, mean)  # zero spread: scipy would warn about the degenerate variance
    else:
        from scipy.stats import ttest_1samp

        t_ci = ttest_1samp(diffs, 0.0).confidence_interval(confidence_level=0.95)
        low, high = float(t_ci.low), float(t_ci.high)
        ci = (max(-1.0, min(low, mean)), min(1.0, max(high, mean)))
    return {"mean_diff": mean, "ci95": ci, "n": n, "a_only": a_only, "b_only": b_only}



# --------------------------------------------------------------------------------------------
# One-sided bounds for decisions at a stated confidence (the LiteStage search's target tests)


@functools.lru_cache(maxsize=65536)  # the looks, sweeps and power computations ask for the same counts again
def paired_difference_bounds(gained: int, lost: int, n: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(estimate, lower, upper)`` of the mean paired difference ``(gained - lost) / n`` over ``n``
    items, each bound one-sided at ``confidence``: scipy's one-sample t test on the per-item
    differences (+1 gained, -1 lost, 0 otherwise). With no discordant item both bounds are the point
    (the two sides answered alike on every item); ``n == 0`` gives nans."""
    if n == 0:
        return NAN, NAN, NAN
    mean = (gained - lost) / n
    if gained + lost == 0 or n < 2:
        return mean, mean, mean
    from scipy.stats import ttest_1samp

    diffs = [1] * gained + [-1] * lost + [0] * (n - gained - lost)
    low = ttest_1samp(diffs, 0.0, alternative="greater").confidence_interval(confidence).low
    high = ttest_1samp(diffs, 0.0, alternative="less").confidence_interval(confidence).high
    return mean, float(low), float(high)


@functools.lru_cache(maxsize=65536)
def proportion_bounds(k: int, n: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(estimate, lower, upper)`` of a proportion ``k / n``, each bound one-sided at ``confidence``
    (exact Clopper-Pearson: the two-sided interval at ``2 * confidence - 1``); nans when ``n == 0``."""
    if n == 0:
        return NAN, NAN, NAN
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=2 * confidence - 1, method="exact")
    return k / n, float(ci.low), float(ci.high)


def noninferiority_power(n: int, tolerance: float, discordance: float, confidence: float = 0.95,
                         looks: Sequence[int] = (), seed: int = 0, efficacy: float | None = None,
                         final_confidence: float | None = None) -> float:
    """Power of the paired non-inferiority test (lower bound of the difference above ``-tolerance``)
    when the two sides are equally accurate and a fraction ``discordance`` of items differ in
    correctness: normal approximation, the per-item difference has variance ``discordance``.

    ``looks``: interim item counts (below ``n``) after which a candidate stops as a clear miss when its
    upper bound (at ``confidence``) on the items so far is below ``-tolerance``, and, given
    ``efficacy`` (the confidence of an interim "meets"), as a meet when its lower bound at that
    confidence is above it. ``final_confidence`` (default ``confidence``): the lower bound's at ``n``.
    The estimates after m and after n items are jointly normal (covariance ``discordance / max(m, n)``):
    the power is the sum over the looks of the chance to go on at every earlier look and meet at this
    one, each a box probability of scipy's multivariate normal (seeded: its integration is randomised)."""
    from scipy.stats import multivariate_normal, norm

    if discordance <= 0:
        return 1.0
    z, z_final = norm.ppf(confidence), norm.ppf(final_confidence or confidence)
    if not looks:
        return float(norm.cdf(tolerance * n ** 0.5 / discordance ** 0.5 - z_final))
    counts = [*sorted(looks), n]
    sd = [(discordance / m) ** 0.5 for m in counts]
    # at an interim look m: a clear miss below -tolerance - z * sd(m), a meet at or above
    # -tolerance + z_efficacy * sd(m); at n a meet at or above -tolerance + z_final * sd(n)
    futile = [-tolerance - z * s for s in sd[:-1]]
    meet = [-tolerance + (norm.ppf(efficacy) if efficacy is not None else math.inf) * s for s in sd[:-1]]
    meet.append(-tolerance + z_final * sd[-1])
    cov = [[discordance / max(a, b) for b in counts] for a in counts]
    power = 0.0
    for i in range(len(counts)):
        if math.isinf(meet[i]):
            continue
        # P(futile_j <= X_j < meet_j for j < i, X_i >= meet_i) for X ~ N(0, cov); as -X has the same
        # distribution: P(-meet_j < Y_j <= -futile_j, Y_i <= -meet_i)
        dist = multivariate_normal(mean=[0.0] * (i + 1), cov=[row[:i + 1] for row in cov[:i + 1]], seed=seed)
        low = [-m for m in meet[:i]] + [-math.inf]
        high = [-f for f in futile[:i]] + [-meet[i]]
        power += float(dist.cdf(high, lower_limit=low)) if i else float(norm.cdf(high[0] / sd[0]))
    return power


def agreement_power(n: int, minimum: float, true_agreement: float, confidence: float = 0.95,
                    looks: Sequence[int] = (), efficacy: float | None = None,
                    final_confidence: float | None = None) -> float:
    """Power of the agreement test (one-sided Clopper-Pearson lower bound at or above ``minimum``)
    when the true agreement is ``true_agreement``: exact. ``looks``: interim item counts (below
    ``n``) after which a candidate stops as a clear miss when its upper bound (at ``confidence``) on
    the items so far is below ``minimum``, and, given ``efficacy`` (the confidence of an interim
    "meets"), as a meet when its lower bound at that confidence is at or above it. The binomial's
    distribution of agreeing items is carried from look to look without the counts that stop there
    (those that meet are added to the power), and summed at ``n`` over the counts whose lower bound
    at ``final_confidence`` (default ``confidence``) passes."""
    import numpy as np
    from scipy.stats import binom

    dist, done, power = np.ones(1), 0, 0.0
    for m in [*sorted(looks), n]:
        dist, done = np.convolve(dist, binom.pmf(np.arange(m - done + 1), m - done, true_agreement)), m
        if m < n:
            dist[:_first_count(m, lambda k: proportion_bounds(k, m, confidence)[2] >= minimum)] = 0.0
            if efficacy is not None:
                met = _first_count(m, lambda k: proportion_bounds(k, m, efficacy)[1] >= minimum)
                power += float(dist[met:].sum())
                dist[met:] = 0.0
    final = final_confidence or confidence
    return power + float(dist[_first_count(n, lambda k: proportion_bounds(k, n, final)[1] >= minimum):].sum())


def _first_count(n: int, holds) -> int:
    """The smallest count k in 0..n for which ``holds(k)``, a condition that stays true once true
    (a bound rising with k); n + 1 when none."""
    return bisect.bisect_left(range(n + 1), True, key=holds)
