"""Tests of significance and confidence intervals, all from scipy (method.md §5).

Wilson intervals for accuracies, exact McNemar for method vs dense on the same items, a t interval
for paired accuracy differences and a seeded paired bootstrap for speedups. No formula is written out
here: each function only shapes its inputs for scipy and its outputs for JSON (plain floats, ``nan``
where a statistic is undefined). scipy is imported inside the functions so that importing this module
(through ``metrics``) stays cheap for commands that never compute a statistic.
"""
from __future__ import annotations

import warnings
from typing import Sequence

NAN = float("nan")


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
    n = len(correct)
    if n == 0:
        return NAN, (NAN, NAN)
    k = sum(1 for c in correct if c)
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


def _median_ratio(dense, method, axis: int = -1):
    """Vectorised statistic for the bootstrap: median(dense) / median(method) along ``axis``."""
    import numpy as np

    return np.median(dense, axis=axis) / np.median(method, axis=axis)


def speedup_ci95(
    dense_latencies: Sequence[float],
    method_latencies: Sequence[float],
    seed: int = 0,
    n_resamples: int = 2000,
) -> tuple[float, float]:
    """Seeded paired-bootstrap 95% percentile interval of ``median(dense) / median(method)``.

    Both lists hold latencies of the same items in the same order. Fewer than two items gives
    ``(nan, nan)``; degenerate data (every latency equal) gives a collapsed interval, not an error.
    Raises ``ValueError`` when the lengths differ.
    """
    if len(dense_latencies) != len(method_latencies):
        raise ValueError(
            f"speedup_ci95 needs the same items: {len(dense_latencies)} dense vs {len(method_latencies)} method"
        )
    if len(dense_latencies) < 2:
        return NAN, NAN
    import numpy as np
    from scipy.stats import bootstrap

    d = np.asarray(dense_latencies, dtype=float)
    m = np.asarray(method_latencies, dtype=float)
    # Percentile rather than BCa: BCa needs a jackknife that degenerates when all latencies are equal.
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        res = bootstrap(
            (d, m), _median_ratio, paired=True, vectorized=True, n_resamples=n_resamples,
            confidence_level=0.95, method="percentile", rng=np.random.default_rng(seed),
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


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

