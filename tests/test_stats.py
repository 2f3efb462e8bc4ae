"""Fast tests for litestage_bench.records.stats: scipy-backed intervals and tests, against hand-computed values."""
from __future__ import annotations

import math
import warnings

import pytest

from litestage_bench.records import metrics, stats, timing


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


def _item_log_ratios(n: int, ratio: float = 2.0) -> list[float]:
    """Per-item mean log speedups around log(ratio) with a deterministic wobble."""
    return [math.log(ratio * (1.0 + 0.1 * math.cos(i * 2.3)) / (1.0 + 0.3 * math.sin(i * 1.7))) for i in range(n)]


def test_speedup_ci_is_the_t_interval_on_item_log_ratios():
    ratios = [1.10, 1.30, 0.90, 1.20]
    logs = [math.log(r) for r in ratios]
    mean = sum(logs) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 3)
    half = 3.182446 * sd / 2  # Student t 0.975 quantile, 3 df, from printed tables; sqrt(4) = 2
    (lo, hi), refused = timing.t_gm_ci95(logs)
    assert refused is None
    assert lo == pytest.approx(math.exp(mean - half), rel=1e-6)
    assert hi == pytest.approx(math.exp(mean + half), rel=1e-6)
    assert (lo, hi) == pytest.approx((0.86676, 1.43377), abs=5e-5)  # the same, worked once by hand


def test_speedup_ci_contains_the_point_and_narrows_with_more_items():
    logs = _item_log_ratios(40)
    (lo, hi), _ = timing.t_gm_ci95(logs)
    point = math.exp(sum(logs) / len(logs))
    assert lo <= point <= hi
    assert 1.5 < lo and hi < 2.5
    (s_lo, s_hi), _ = timing.t_gm_ci95(_item_log_ratios(10))
    (l_lo, l_hi), _ = timing.t_gm_ci95(_item_log_ratios(400))
    assert l_hi - l_lo < s_hi - s_lo


def test_speedup_ci_is_refused_below_three_items_or_without_spread():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ci, why = timing.t_gm_ci95([math.log(2.0)] * 5)
    assert all(math.isnan(x) for x in ci) and why == "no spread across items"
    for logs, why_expected in (([0.1, 0.3], "2 timed items, 3 needed"), ([0.1], "1 timed item, 3 needed"),
                               ([], "0 timed items, 3 needed")):
        ci, why = timing.t_gm_ci95(logs)
        assert all(math.isnan(x) for x in ci) and why == why_expected
    (lo, hi), why = timing.t_gm_ci95([0.1, 0.3, 0.2])  # from 3 items on, an interval
    assert why is None and lo < math.exp(0.2) < hi


def _coverage(interval, n: int = 3, draws: int = 2000, sigma: float = 0.15, seed: int = 11) -> float:
    """Share of `draws` samples of n log-normal per-item ratios around a true speedup of 1.3 whose
    interval(item log ratios) -> (low, high) covers 1.3."""
    import numpy as np

    rng = np.random.default_rng(seed)
    truth = 1.3
    hits = 0
    for _ in range(draws):
        lo, hi = interval([float(x) for x in rng.normal(math.log(truth), sigma, n)])
        hits += lo <= truth <= hi
    return hits / draws


def test_t_interval_keeps_its_coverage_at_three_items():
    assert 0.90 <= _coverage(lambda logs: timing.t_gm_ci95(logs)[0]) <= 0.99


def test_the_old_percentile_bootstrap_undercovers_at_three_items():
    """Why the interval changed: at 3 items the percentile bootstrap is about the items' range."""
    from litestage_bench.studies.intervals import percentile_bootstrap_gm_ci95

    assert _coverage(percentile_bootstrap_gm_ci95) < 0.85


def test_old_percentile_bootstrap_is_scipys():
    import numpy as np
    from scipy.stats import bootstrap

    from litestage_bench.studies.intervals import percentile_bootstrap_gm_ci95

    logs = _item_log_ratios(7)
    res = bootstrap((np.asarray(logs),), np.mean, vectorized=True, n_resamples=2000, confidence_level=0.95,
                    method="percentile", rng=np.random.default_rng(3))
    expected = (math.exp(res.confidence_interval.low), math.exp(res.confidence_interval.high))
    assert percentile_bootstrap_gm_ci95(logs, seed=3) == pytest.approx(expected, rel=1e-12)


def test_median_skips_untimed_items():
    nan = float("nan")
    assert metrics.median([3.0, nan, 1.0, None, 2.0]) == 2.0
    assert math.isnan(metrics.median([nan]))



def test_one_sided_bounds_of_a_paired_difference_match_the_t_formula():
    from scipy.stats import t

    gained, lost, n = 6, 14, 200
    est, low, high = stats.paired_difference_bounds(gained, lost, n, 0.95)
    mean = (gained - lost) / n
    sd = math.sqrt(((gained + lost) / n - mean ** 2) * n / (n - 1))
    half = t.ppf(0.95, n - 1) * sd / math.sqrt(n)
    assert (est, low, high) == pytest.approx((mean, mean - half, mean + half))
    assert stats.paired_difference_bounds(0, 0, 50) == (0.0, 0.0, 0.0)  # identical answers: no spread
    assert stats.paired_difference_bounds(3, 3, 100, 0.99)[1] < stats.paired_difference_bounds(3, 3, 100, 0.9)[1]


def test_one_sided_proportion_bounds_are_clopper_pearson():
    est, low, high = stats.proportion_bounds(50, 50, 0.95)
    assert est == 1.0 and high == 1.0 and low == pytest.approx(0.05 ** (1 / 50))  # all successes: alpha^(1/n)
    est, low, high = stats.proportion_bounds(0, 20, 0.95)
    assert low == 0.0 and high == pytest.approx(1 - 0.05 ** (1 / 20))


def test_power_grows_with_items_and_falls_with_discordance():
    assert stats.noninferiority_power(200, 0.04, 0.05) > stats.noninferiority_power(50, 0.04, 0.05)
    assert stats.noninferiority_power(200, 0.04, 0.05) > stats.noninferiority_power(200, 0.04, 0.2)
    assert stats.noninferiority_power(10, 0.04, 0.0) == 1.0
    # exact agreement power: at the minimum itself the test keeps its level (<= 5%)
    assert stats.agreement_power(200, 0.9, 0.9) <= 0.05
    assert stats.agreement_power(200, 0.9, 0.95) > stats.agreement_power(100, 0.9, 0.95)


def test_agreement_power_with_interim_looks_matches_a_simulation():
    """Paths of a candidate's agreeing items, stopped at a look when the upper bound so far is below the
    minimum: the exact power with looks equals the simulated share that meets at the end."""
    np = pytest.importorskip("numpy")
    n, minimum, true, looks = 200, 0.9, 0.92, (48, 96, 152)
    rng = np.random.default_rng(0)
    agree = np.cumsum(rng.random((20000, n)) < true, axis=1)
    going = np.ones(len(agree), dtype=bool)
    for m in looks:
        going &= np.array([stats.proportion_bounds(int(k), m)[2] >= minimum for k in range(m + 1)])[agree[:, m - 1]]
    passing = np.array([stats.proportion_bounds(int(k), n)[1] >= minimum for k in range(n + 1)])[agree[:, -1]]
    simulated = float((going & passing).mean())
    exact = stats.agreement_power(n, minimum, true, 0.95, looks)
    assert exact == pytest.approx(simulated, abs=3 * (simulated * (1 - simulated) / len(agree)) ** 0.5)
    assert exact < stats.agreement_power(n, minimum, true)  # the looks stop some paths that would have met
    assert stats.agreement_power(n, minimum, 0.95, 0.95, looks) == pytest.approx(stats.agreement_power(n, minimum, 0.95),
                                                                                 abs=1e-3)


def test_noninferiority_power_with_interim_looks_matches_a_simulation():
    """The normal model of the paired difference: per-item differences of variance `discordance`,
    stopped at a look when the upper bound so far is below -tolerance."""
    np = pytest.importorskip("numpy")
    from scipy.stats import norm
    n, tol, d, looks = 200, 0.04, 0.2, (48, 96, 152)
    z = norm.ppf(0.95)
    rng = np.random.default_rng(1)
    means = np.cumsum(rng.normal(0.0, d ** 0.5, (20000, n)), axis=1) / np.arange(1, n + 1)
    going = np.ones(len(means), dtype=bool)
    for m in looks:
        going &= means[:, m - 1] + z * (d / m) ** 0.5 >= -tol
    simulated = float((going & (means[:, -1] - z * (d / n) ** 0.5 >= -tol)).mean())
    power = stats.noninferiority_power(n, tol, d, 0.95, looks)
    assert power == pytest.approx(simulated, abs=3 * (simulated * (1 - simulated) / len(means)) ** 0.5)
    assert power < stats.noninferiority_power(n, tol, d)
    assert stats.noninferiority_power(n, tol, d, 0.95, looks) == power  # seeded: the same number again


@pytest.mark.parametrize("d, efficacy, final", [(0.1, 1 - 0.01 / 3, 0.96), (0.2, 0.95, 0.95)])
def test_noninferiority_power_with_efficacy_stops_matches_a_simulation(d, efficacy, final):
    """The same normal model with a stop as meeting at an interim look (lower bound at the interim
    confidence above -tolerance) and the last look at its own confidence: the power sums the chance
    of meeting at each look (scipy's multivariate normal over boxes). Efficacy stops at the plain
    confidence add 11 points here (0.46 against 0.35): the simulation tells the two apart."""
    np = pytest.importorskip("numpy")
    from scipy.stats import norm
    n, tol, looks = 200, 0.04, (48, 96, 152)
    z, z_e, z_f = norm.ppf(0.95), norm.ppf(efficacy), norm.ppf(final)
    rng = np.random.default_rng(2)
    means = np.cumsum(rng.normal(0.0, d ** 0.5, (20000, n)), axis=1) / np.arange(1, n + 1)
    going, met = np.ones(len(means), dtype=bool), np.zeros(len(means), dtype=bool)
    for m in looks:
        sd = (d / m) ** 0.5
        now = going & (means[:, m - 1] - z_e * sd >= -tol)
        met |= now
        going &= ~now & (means[:, m - 1] + z * sd >= -tol)
    met |= going & (means[:, -1] - z_f * (d / n) ** 0.5 >= -tol)
    simulated = float(met.mean())
    power = stats.noninferiority_power(n, tol, d, 0.95, looks, efficacy=efficacy, final_confidence=final)
    assert power == pytest.approx(simulated, abs=3 * (simulated * (1 - simulated) / len(means)) ** 0.5 + 1e-3)
