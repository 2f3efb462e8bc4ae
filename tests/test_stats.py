"""Fast tests for litestage_bench.stats: scipy-backed intervals and tests, against hand-computed values."""
from __future__ import annotations

import math
import warnings

import pytest

from litestage_bench import metrics, stats


def test_wilson_matches_closed_form():
    # Closed-form Wilson interval for k=7, n=20, z=1.959964, worked by hand once:
    # center = (p + z^2/2n) / (1 + z^2/n), half = z * sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    lo, hi = stats.wilson_ci95(7, 20)
    assert lo == pytest.approx(0.181192, abs=1e-5)
    assert hi == pytest.approx(0.567146, abs=1e-5)


def test_wilson_edges():
    assert all(math.isnan(x) for x in stats.wilson_ci95(0, 0))
    lo, hi = stats.wilson_ci95(0, 10)
    assert lo == 0.0 and 0.0 < hi < 0.3
    lo, hi = stats.wilson_ci95(10, 10)
    assert hi == 1.0 and 0.7 < lo < 1.0


def test_accuracy_ci95_delegates_and_metrics_name_still_works():
    correct = [True] * 7 + [False] * 13
    acc, ci = stats.accuracy_ci95(correct)
    assert acc == 0.35 and ci == stats.wilson_ci95(7, 20)
    assert metrics.accuracy_ci95(correct) == (acc, ci)
    acc, (lo, hi) = stats.accuracy_ci95([])
    assert math.isnan(acc) and math.isnan(lo) and math.isnan(hi)


def test_mcnemar_exact_reference_values():
    # b = 1 (dense right, method wrong), c = 9: p = 2 * P(X <= 1 | n=10, 1/2) = 2 * 11/1024
    method = [False] + [True] * 9 + [True] * 5
    dense = [True] + [False] * 9 + [True] * 5
    assert stats.mcnemar_exact_p(method, dense) == pytest.approx(22 / 1024)
    # b = 0, c = 5: p = 2 * (1/2)^5
    assert stats.mcnemar_exact_p([True] * 5, [False] * 5) == pytest.approx(2 / 32)


def test_mcnemar_balanced_and_concordant_give_one():
    assert stats.mcnemar_exact_p([True, False, True, False], [False, True, False, True]) == 1.0  # b = c
    assert stats.mcnemar_exact_p([True, False], [True, False]) == 1.0  # no discordant pair
    assert stats.mcnemar_exact_p([], []) == 1.0
    with pytest.raises(ValueError):
        stats.mcnemar_exact_p([True], [True, False])


def test_paired_difference_t_interval_and_edges():
    a = [True, True, True, False, True, False, True, True]
    b = [True, False, False, False, True, True, False, True]
    d = stats.paired_difference(a, b)
    diffs = [0, 1, 1, 0, 0, -1, 1, 0]
    mean = sum(diffs) / 8
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 7)
    half = 2.364624 * sd / math.sqrt(8)  # Student t 0.975 quantile, 7 df, from printed tables
    assert d["ci95"][0] == pytest.approx(mean - half, rel=1e-6)
    assert d["ci95"][1] == pytest.approx(mean + half, rel=1e-6)
    assert stats.paired_difference([True, True], [False, False])["ci95"] == (1.0, 1.0)  # zero spread
    assert all(math.isnan(x) for x in stats.paired_difference([True], [False])["ci95"])
    assert metrics.paired_difference(a, b) == d


def _latencies(n: int, ratio: float = 2.0) -> tuple[list[float], list[float]]:
    """Method latencies around 1 s with a deterministic wobble; dense is ``ratio`` times slower."""
    method = [1.0 + 0.3 * math.sin(i * 1.7) for i in range(n)]
    dense = [ratio * m * (1.0 + 0.1 * math.cos(i * 2.3)) for i, m in enumerate(method)]
    return dense, method


def test_speedup_ci_is_reproducible_and_contains_the_point():
    dense, method = _latencies(40)
    ci = stats.speedup_ci95(dense, method, seed=3)
    assert ci == stats.speedup_ci95(dense, method, seed=3)
    assert ci != stats.speedup_ci95(dense, method, seed=4)
    point = metrics.speedup(dense, method)
    assert ci[0] <= point <= ci[1]
    assert 1.5 < ci[0] and ci[1] < 2.5


def test_speedup_ci_narrows_with_more_items():
    small = stats.speedup_ci95(*_latencies(10))
    large = stats.speedup_ci95(*_latencies(400))
    assert large[1] - large[0] < small[1] - small[0]


def test_speedup_ci_degenerate_and_short_inputs():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stats.speedup_ci95([2.0] * 5, [1.0] * 5) == (2.0, 2.0)
    assert all(math.isnan(x) for x in stats.speedup_ci95([1.0], [1.0]))
    assert all(math.isnan(x) for x in stats.speedup_ci95([], []))
    with pytest.raises(ValueError):
        stats.speedup_ci95([1.0, 2.0], [1.0])


def test_median_and_speedup_skip_untimed_items():
    nan = float("nan")
    assert metrics.median([3.0, nan, 1.0, None, 2.0]) == 2.0
    assert math.isnan(metrics.median([nan]))
    # the pair (nan, 1.0) is dropped on both sides: median(4, 6) / median(2, 3)
    assert metrics.speedup([nan, 4.0, 6.0], [1.0, 2.0, 3.0]) == pytest.approx(2.0)
    assert math.isnan(metrics.speedup([nan], [1.0]))
