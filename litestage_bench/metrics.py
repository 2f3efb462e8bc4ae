"""Accuracy with confidence intervals, paired differences, medians and speedups (method.md §5).

The statistics themselves live in ``stats`` (scipy); this module keeps the names the rest of the
package imports. Empty inputs give ``nan`` rather than an exception, because a record with zero
items is still worth writing (and showing as ``nan``) when a run was limited to nothing by mistake.
Latencies may be ``nan`` for items that were evaluated in a batch and not timed: medians and
speedups use only the finite ones.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

from . import stats

NAN = float("nan")


def accuracy_ci95(correct: Sequence[bool]) -> tuple[float, tuple[float, float]]:
    """``(accuracy, (low, high))`` with the Wilson 95% interval (see ``stats.accuracy_ci95``)."""
    return stats.accuracy_ci95(correct)


def paired_difference(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Mean of ``a_i - b_i`` on the same items with its 95% CI (see ``stats.paired_difference``)."""
    return stats.paired_difference(a, b)


def _is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def median(xs: Sequence[float | None]) -> float:
    """Median of the finite values of ``xs`` (untimed items are ``nan``); ``nan`` when none is."""
    vals = [float(x) for x in xs if _is_finite(x)]
    return float(statistics.median(vals)) if vals else NAN


def timed_pairs(
    dense_latencies: Sequence[float | None], method_latencies: Sequence[float | None]
) -> tuple[list[float], list[float]]:
    """The latency pairs (same item) where both sides were timed; ``ValueError`` on unequal lengths."""
    if len(dense_latencies) != len(method_latencies):
        raise ValueError(
            f"speedup needs latencies on the same items: {len(dense_latencies)} dense vs "
            f"{len(method_latencies)} method"
        )
    pairs = [(float(d), float(m)) for d, m in zip(dense_latencies, method_latencies) if _is_finite(d) and _is_finite(m)]
    return [d for d, _ in pairs], [m for _, m in pairs]


def speedup(dense_latencies: Sequence[float | None], method_latencies: Sequence[float | None]) -> float:
    """``median(dense) / median(method)`` over the items timed on both sides, same run.

    Raises ``ValueError`` when the two lists have different lengths (they cannot be the same items)
    or the method's median latency is not positive. No timed pair gives ``nan``.
    """
    dense, method = timed_pairs(dense_latencies, method_latencies)
    if not dense:
        return NAN
    m = median(method)
    if not m > 0:
        raise ValueError(f"method median latency must be positive, got {m}")
    return median(dense) / m
