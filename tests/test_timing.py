"""Interleaved timing: a machine that slows down for a stretch moves a sequential speedup, not an
interleaved one; the decomposition multiplies back to the speedup."""
from __future__ import annotations

import math

import pytest

from litestage_bench.engine.plan import DENSE, SkipPlan
from litestage_bench.evaluation.benchmarks import Question
from litestage_bench.evaluation.runner import time_items
from litestage_bench.records import timing
from litestage_bench.records.results import ItemResult

METHOD = SkipPlan({}, "method")
TRUE_SPEEDUP = 2.0


class SlowStretchReasoner:
    """A reasoner on a fake clock: dense costs 2 s per question and the method 1 s (prefill 0.4 s
    of each), except during calls [slow_from, slow_to), when the machine runs 3x slower."""

    def __init__(self, slow_from: int, slow_to: int, factor: float = 3.0) -> None:
        self.calls, self.slow_from, self.slow_to, self.factor = 0, slow_from, slow_to, factor

    def solve(self, q: Question, plan: SkipPlan, callbacks=None, memo=None) -> ItemResult:
        slow = self.factor if self.slow_from <= self.calls < self.slow_to else 1.0
        self.calls += 1
        base = 2.0 if plan is DENSE else 1.0
        stages = {"recall": 0.25 * base * slow, "analyze": 0.5 * base * slow, "summarize": 0.25 * base * slow}
        return ItemResult(id=q.id, answer="A", prediction="A", rule="regex", correct=True,
                          latency_s=sum(stages.values()), stage_latency_s=stages,
                          tokens={"recall": 10, "analyze": 20, "summarize": 10},
                          prefill_s={s: 0.2 * v for s, v in stages.items()},
                          prefill_tokens={"recall": 50, "analyze": 60, "summarize": 80})


ITEMS = [Question(f"q{i}", "?", ("x", "y"), ("A", "B"), "A") for i in range(20)]


def _interleaved(reasoner) -> float:
    clock = time_items(reasoner, {"method": (METHOD, {}), "dense": (DENSE, {})}, ITEMS, warmup=0, progress=False,
                       rounds=2)
    return timing.paired_speedup(clock["dense"], clock["method"])["speedup"]


def _sequential(reasoner) -> float:
    dense = time_items(reasoner, {"dense": (DENSE, {})}, ITEMS, warmup=0, progress=False, rounds=2)["dense"]
    method = time_items(reasoner, {"method": (METHOD, {})}, ITEMS, warmup=0, progress=False, rounds=2)["method"]
    return timing.paired_speedup(dense, method)["speedup"]


def test_quiet_machine_gives_the_true_speedup_both_ways():
    assert _interleaved(SlowStretchReasoner(0, 0)) == pytest.approx(TRUE_SPEEDUP)
    assert _sequential(SlowStretchReasoner(0, 0)) == pytest.approx(TRUE_SPEEDUP)


@pytest.mark.parametrize("slow_from, slow_to", [(10, 30), (3, 17), (0, 41), (25, 80)])
def test_a_slow_stretch_moves_a_sequential_estimate_not_an_interleaved_one(slow_from, slow_to):
    """80 calls in all (20 items x 2 rounds x 2 pipelines). Interleaved: within 10% of the truth.
    Sequential (all dense, then all method): the stretch hits one side only."""
    interleaved = _interleaved(SlowStretchReasoner(slow_from, slow_to))
    assert interleaved == pytest.approx(TRUE_SPEEDUP, rel=0.10)
    sequential = _sequential(SlowStretchReasoner(slow_from, slow_to))
    assert abs(sequential / TRUE_SPEEDUP - 1) > 0.30


def test_rounds_alternate_who_goes_first_and_are_recorded():
    clock = time_items(SlowStretchReasoner(0, 0), {"method": (METHOD, {}), "dense": (DENSE, {})}, ITEMS[:3],
                       warmup=0, progress=False, rounds=3)
    for i, (m, d) in enumerate(zip(clock["method"], clock["dense"]), 1):
        assert len(m.timing_rounds) == len(d.timing_rounds) == 3
        firsts = [e["first"] for e in m.timing_rounds]
        assert firsts == [bool((i + r) % 2) for r in range(3)]
        assert [e["first"] for e in d.timing_rounds] == [not f for f in firsts]
    paired = timing.paired_speedup(clock["dense"], clock["method"])
    assert paired["rounds"] == 3 and paired["speedup_rounds"] == pytest.approx([TRUE_SPEEDUP] * 3)


def test_ci_widens_with_round_to_round_noise():
    quiet = time_items(SlowStretchReasoner(0, 0), {"method": (METHOD, {}), "dense": (DENSE, {})}, ITEMS,
                       warmup=0, progress=False, rounds=2)
    paired = timing.paired_speedup(quiet["dense"], quiet["method"])
    # every item's ratio is exactly 2: no spread to measure, so no interval rather than a zero-width one
    assert all(math.isnan(x) for x in paired["ci95"]) and paired["ci95_refused"] == "no spread across items"
    noisy = time_items(SlowStretchReasoner(9, 30, factor=1.7), {"method": (METHOD, {}), "dense": (DENSE, {})},
                       ITEMS, warmup=0, progress=False, rounds=2)
    paired = timing.paired_speedup(noisy["dense"], noisy["method"])
    lo, hi = paired["ci95"]
    assert paired["ci95_refused"] is None
    assert lo < paired["speedup"] < hi and hi / lo < 1.5  # the boundary pairs' noise shows, bounded


def _item(stage_s: dict, tokens: dict, prefill_s: dict, prefill_tokens: dict) -> ItemResult:
    return ItemResult(id="q", answer="A", prediction="A", rule="regex", correct=True,
                      latency_s=sum(stage_s.values()), stage_latency_s=stage_s, tokens=tokens,
                      prefill_s=prefill_s, prefill_tokens=prefill_tokens)


def test_decomposition_multiplies_back_to_the_speedup():
    """The method writes a quarter of dense's Analyze tokens at 0.8x its cost per token."""
    dense = _item({"recall": 1.0, "analyze": 4.0, "summarize": 1.0}, {"recall": 10, "analyze": 40, "summarize": 10},
                  {"recall": 0.2, "analyze": 0.4, "summarize": 0.2}, {"recall": 50, "analyze": 60, "summarize": 80})
    method = _item({"recall": 0.8, "analyze": 0.8, "summarize": 0.8}, {"recall": 10, "analyze": 10, "summarize": 10},
                   {"recall": 0.16, "analyze": 0.32, "summarize": 0.16}, {"recall": 50, "analyze": 60, "summarize": 80})
    parts = timing.decompose([dense], [method])
    analyze = parts["analyze"]
    assert analyze["speedup"] == pytest.approx(5.0)
    assert analyze["token_factor"] == pytest.approx(4.0)
    assert analyze["per_token_factor"] == pytest.approx(1.25)
    assert analyze["prefill_per_token_factor"] == pytest.approx(1.25)
    assert analyze["decode_per_token_factor"] == pytest.approx((3.6 / 40) / (0.48 / 10))
    total = parts["total"]
    assert total["speedup"] == pytest.approx(6.0 / 2.4)
    assert total["speedup"] == pytest.approx(total["token_factor"] * total["per_token_factor"])
    assert total["token_factor"] == pytest.approx(60 / 30)
    assert timing.paired_speedup([dense], [method])["speedup"] == pytest.approx(total["speedup"])


def test_items_timed_on_one_side_only_are_left_out():
    timed = _item({"recall": 1.0, "analyze": 1.0, "summarize": 1.0}, {"recall": 1, "analyze": 1, "summarize": 1}, {}, {})
    untimed = ItemResult(id="q", answer="A", prediction="A", rule="regex", correct=True, latency_s=math.nan,
                         stage_latency_s={}, tokens={"recall": 1, "analyze": 1, "summarize": 1})
    paired = timing.paired_speedup([timed, untimed], [timed, timed])
    assert paired["n_items"] == 1 and paired["speedup"] == pytest.approx(1.0)
    assert math.isnan(paired["ci95"][0]) and paired["ci95_refused"] == "1 timed item, 3 needed"
    assert timing.decompose([timed], [timed])["total"]["prefill_per_token_factor"] is None
