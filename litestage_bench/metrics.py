"""Accuracy with confidence intervals, paired differences, medians and speedups (method.md §5).

Pure functions over plain Python sequences: no numpy or torch, so result files can be re-aggregated
anywhere. Empty inputs give ``nan`` rather than an exception, because a record with zero items is
still worth writing (and showing as ``nan``) when a run was limited to nothing by mistake.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

# Two-sided 95% normal quantile, Phi^-1(0.975).
Z95 = 1.959963984540054

NAN = float("nan")


def accuracy_ci95(correct: Sequence[bool]) -> tuple[float, tuple[float, float]]:
    """Return ``(accuracy, (low, high))`` with the Wilson score 95% interval.

    Wilson rather than the plain normal interval because it stays inside [0, 1] and behaves at
    0% / 100% accuracy and small n. ``n == 0`` gives ``(nan, (nan, nan))``.
    """
    n = len(correct)
    if n == 0:
        return NAN, (NAN, NAN)
    k = sum(1 for c in correct if c)
    p = k / n
    z2 = Z95 * Z95
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = max(0.0, center - half)
    high = min(1.0, center + half)
    # Rounding can put the bound a hair past the estimate at p = 0 or 1; the interval must contain it.
    return p, (min(low, p), max(high, p))


def paired_difference(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Compare two methods on the same items: mean of ``a_i - b_i`` and its 95% CI.

    The interval is the normal approximation on the paired differences (mean +- z * sd / sqrt(n),
    sample sd), clipped to [-1, 1]. With n < 2 the interval is ``(nan, nan)``; when every
    difference is equal the sd is 0 and the interval collapses to the point.

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
    else:
        sd = statistics.stdev(diffs)
        half = Z95 * sd / math.sqrt(n)
        ci = (max(-1.0, mean - half), min(1.0, mean + half))
    return {"mean_diff": mean, "ci95": ci, "n": n, "a_only": a_only, "b_only": b_only}


def median(xs: Sequence[float]) -> float:
    """Median of ``xs``; ``nan`` when empty."""
    if len(xs) == 0:
        return NAN
    return float(statistics.median(xs))


def speedup(dense_latencies: Sequence[float], method_latencies: Sequence[float]) -> float:
    """``median(dense) / median(method)``, both measured on the same items in the same run.

    Raises ``ValueError`` when the two lists have different lengths (they cannot be the same items)
    or the method's median latency is not positive. Empty lists give ``nan``.
    """
    if len(dense_latencies) != len(method_latencies):
        raise ValueError(
            f"speedup needs latencies on the same items: {len(dense_latencies)} dense vs "
            f"{len(method_latencies)} method"
        )
    if len(dense_latencies) == 0:
        return NAN
    m = median(method_latencies)
    if not m > 0:
        raise ValueError(f"method median latency must be positive, got {m}")
    return median(dense_latencies) / m
