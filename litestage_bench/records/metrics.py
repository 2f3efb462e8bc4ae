"""Accuracy with confidence intervals, paired differences and medians (method.md §5).

The statistics themselves live in ``stats`` (scipy); this module keeps the names the rest of the
package imports. Empty inputs give ``nan`` rather than an exception, because a record with zero
items is still worth writing (and showing as ``nan``) when a run was limited to nothing by mistake.
Latencies may be ``nan`` for items that were evaluated in a batch and not timed: medians use only
the finite ones (speedups: ``timing``).
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
