"""The LiteStage search's cost controls: efficacy stops with alpha spending (the chance of a false
"meets" stays at or below alpha), the coarse-to-fine #skip sweep, ranking by predicted speedup with
only the finalists timed, and their command-line flags."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from litestage_bench.core.errors import UserError
from litestage_bench.engine.plan import STAGES, SkipSet
from litestage_bench.evaluation.benchmarks import Question
from litestage_bench.evaluation.reasoner import StageMemo
from litestage_bench.methods import litestage
from litestage_bench.methods.litestage import SearchOptions
from litestage_bench.methods.search_decisions import LookPlan, decide, look_ends, run_looks, spending
from litestage_bench.methods.search_rows import RowStore
from litestage_bench.methods.search_speed import SpeedPredictor, find_predictor
from litestage_bench.methods.search_sweep import coarse_to_fine, finalists, sweep, threshold_sweep
from litestage_bench.records import stats
from litestage_bench.records.items import ItemResult

AGREE = {"kind": "agreement", "min_agreement": 0.9}
ACC = {"kind": "accuracy", "tolerance_points": 4.0}
FIT = Path(__file__).resolve().parent.parent / "results" / "latency" / "fit_smollm2-135m_float32_cpu_amd-epyc.json"


def _counts(n: int, changed: int = 0, gained: int = 0, skipped: int = 0, ids: list[str] | None = None) -> dict:
    """One chunk's answer counts (CandidateMeter._answer_counts) of n items, `changed` of them
    changed (all losses but `gained`), with per-item columns when `ids` are given."""
    row = {"n": n, "correct": n // 2 + gained - (changed - gained), "correct_to_wrong": changed - gained,
           "wrong_to_correct": gained, "changed": changed, "answer_kl_n": 0, "answer_kl_sum": 0.0,
           "token_sums": {s: 10 * n for s in STAGES}, "cost_fraction_sums": {s: n for s in STAGES},
           "stage_runs": n, "cpu": "cpu", "seconds": 1.0}
    if ids is not None:
        row["items"] = {"ids": ids, "prediction": ["A"] * n, "tokens": {s: [10] * n for s in STAGES},
                        "cost": {s: [1.0 - 0.02 * skipped] * n for s in STAGES}}
    return row


# ------------------------------------------------------------------------------ efficacy stops, alpha spending


def _false_meets(plan: LookPlan, streams: np.ndarray) -> float:
    """The share of agreement streams (True: the item's answer agrees with dense) that the search's
    look-by-look procedure (run_looks) ends as "meets"."""
    met = 0
    for stream in streams:
        def chunk(lo: int, hi: int) -> dict:
            return _counts(hi - lo, int((~stream[lo:hi]).sum()))
        met += run_looks(AGREE, plan, chunk)[2]["decision"] == "meets"
    return met / len(streams)


def test_alpha_spending_keeps_the_chance_of_a_false_meets_at_or_below_alpha():
    """True agreement exactly at the minimum (0.9): every "meets" is false. With efficacy stops at
    the interim looks, spending alpha (0.2 of it over the 3 interim looks, the rest at the last)
    keeps the rate at or below alpha = 0.05; deciding every look at the plain 95% does not (0.084),
    which is why the spending is needed. The exact binomial power equals the simulated rates."""
    n, sims, alpha = 200, 6000, 0.05
    ends = look_ends(n, 4, 8)
    streams = np.random.default_rng(7).random((sims, n)) < 0.9
    slack = 3 * (alpha * (1 - alpha) / sims) ** 0.5
    efficacy, final = spending(0.95, 0.2, len(ends) - 1)
    spent = _false_meets(LookPlan(tuple(ends), 0.95, efficacy, final), streams)
    plain = _false_meets(LookPlan(tuple(ends), 0.95, 0.95, 0.95), streams)
    assert spent <= alpha + slack
    assert plain > alpha + slack
    for rate, (e, f) in ((spent, (efficacy, final)), (plain, (0.95, 0.95))):
        exact = stats.agreement_power(n, 0.9, 0.9, 0.95, ends[:-1], efficacy=e, final_confidence=f)
        assert exact == pytest.approx(rate, abs=3 * (exact * (1 - exact) / sims) ** 0.5)
    assert stats.agreement_power(n, 0.9, 0.9, 0.95, ends[:-1], efficacy=efficacy, final_confidence=final) <= alpha


def test_a_candidate_stops_at_the_first_look_where_it_meets_and_records_why():
    plan = LookPlan((48, 96, 152, 200), 0.95, *spending(0.95, 0.2, 3))
    calls = []

    def chunk(lo, hi):
        calls.append((lo, hi))
        return _counts(hi - lo)
    answers, parts, test, stopped = run_looks(ACC, plan, chunk)  # no item changes: meets at once
    assert calls == [(0, 48)] and answers["flips"]["n"] == 48 and len(parts) == 1
    assert stopped == {"look": 1, "of": 4, "n": 48, "why": "efficacy"}
    assert test["decision"] == "meets" and test["meets_confidence"] == pytest.approx(1 - 0.01 / 3)
    # without a share nothing stops for efficacy, and the last look decides at the plain confidence
    calls.clear()
    _, _, test, stopped = run_looks(ACC, LookPlan(plan.ends, 0.95, *spending(0.95, 0.0, 3)), chunk)
    assert len(calls) == 4 and stopped["why"] == "all items" and test["meets_confidence"] == 0.95
    # the last look's lower bound is at 1 - 0.8 * alpha: 5 gained and 7 lost of 200 meets at 95%, not at 96%
    counts = {"flips": {"n": 200, "wrong_to_correct": 5, "correct_to_wrong": 7}}
    assert decide(ACC, counts, 0.95)["decision"] == "meets"
    assert decide(ACC, counts, 0.95, 0.96)["decision"] == "undecided"


def test_an_interim_look_stops_for_futility_at_its_own_lower_confidence():
    """41 of 48 agree (0.854): the upper bound at 95% (0.929) does not rule out 0.9, at 70% (0.887)
    it does, so the default futility confidence stops the candidate after the first chunk, where the
    plain one goes on to the third."""
    calls = []

    def chunk(lo, hi):
        calls.append((lo, hi))
        return _counts(hi - lo, (hi - lo) * 7 // 48)
    cheap = LookPlan((48, 96, 152, 200), 0.95, *spending(0.95, 0.2, 3), SearchOptions().futility_confidence)
    _, _, test, stopped = run_looks(AGREE, cheap, chunk)
    assert stopped == {"look": 1, "of": 4, "n": 48, "why": "futility"}
    assert test["decision"] == "clearly misses" and test["confidence"] == 0.7 and test["upper"] < 0.9
    calls.clear()
    _, _, test, stopped = run_looks(AGREE, LookPlan(cheap.ends, 0.95, cheap.efficacy, cheap.final), chunk)
    assert len(calls) == 3 and stopped["why"] == "futility" and test["confidence"] == 0.95


def test_the_futility_confidence_costs_little_power_and_is_recorded():
    for target in ("accuracy", "agreement"):
        cheap, plain = (litestage.target_power(SearchOptions(target=target, futility_confidence=f), 200)
                        for f in (0.7, 0.95))
        key = "power_by_discordance" if target == "accuracy" else "power_by_true_agreement"
        assert cheap["futility_confidence"] == 0.7 and plain["futility_confidence"] == 0.95
        for k, p in cheap[key].items():
            assert plain[key][k] - 0.02 <= p <= plain[key][k] + 1e-6  # lower, by at most 2 points
        assert cheap["without_looks"] == plain["without_looks"]
    for bad in (0.4, 0.96):
        with pytest.raises(UserError, match="futility confidence"):
            SearchOptions(futility_confidence=bad).check()


def test_a_candidate_predicted_clearly_slower_stops_after_its_first_look_and_is_not_chosen():
    plan = LookPlan((48, 96, 152, 200), 0.95, *spending(0.95, 0.2, 3), 0.7)
    calls = []

    def chunk(lo, hi):
        calls.append((lo, hi))
        return _counts(hi - lo, (hi - lo) // 20)  # 95% agreement: undecided at the first look
    _, parts, test, stopped = run_looks(AGREE, plan, chunk, slower=lambda parts: True)
    assert calls == [(0, 48)] and len(parts) == 1
    assert stopped["why"] == "slower" and test["decision"] == "slower"
    # a candidate that meets by efficacy stops as meeting; at a single look nothing is "slower"
    _, _, test, stopped = run_looks(ACC, plan, lambda lo, hi: _counts(hi - lo), slower=lambda parts: True)
    assert stopped["why"] == "efficacy" and test["decision"] == "meets"
    _, _, test, stopped = run_looks(AGREE, LookPlan((200,), 0.95, None, 0.95), chunk, slower=lambda parts: True)
    assert stopped["why"] == "all items" and test["decision"] == "meets"


# ------------------------------------------------------------------------------ coarse to fine

# #skip -> (gained, lost of 200 items, speedup): meets up to 5, a dip (undecided) at 6-7, meets again at
# 8-10, clear misses from 11 on
DIP = {**{k: (1, 2, 1 + 0.05 * k) for k in range(6)}, 6: (4, 14, 1.30), 7: (3, 13, 1.35),
       **{k: (2, 4, 1 + 0.05 * k) for k in (8, 9, 10)}, **{k: (2, 40 + k, 1 + 0.05 * k) for k in range(11, 21)}}
# the same with the dip moved onto the coarse point 8 (undecided there)
DIP_ON_COARSE = {**DIP, 6: (1, 2, 1.30), 7: (4, 14, 1.35), 8: (3, 13, 1.40)}


def _curve_meter(curve: dict):
    seen = []

    def measure(n):
        seen.append(n)
        gained, lost, speed = curve[n]
        row = {"n_skip": n, "speedup": speed, "agreement": 1 - (gained + lost) / 200,
               "flips": {"wrong_to_correct": gained, "correct_to_wrong": lost, "n": 200}}
        return {**row, "test": decide(ACC, row, 0.95)}
    return measure, seen


@pytest.mark.parametrize("curve, coarse_seen", [(DIP, [0, 4, 8, 12, 16, 9, 10, 11]),
                                                (DIP_ON_COARSE, [0, 4, 8, 12, 16, 5, 6, 7, 9, 10, 11])])
def test_coarse_to_fine_keeps_the_fine_sweeps_choice_over_a_dip_with_fewer_candidates(curve, coarse_seen):
    measure, seen = _curve_meter(curve)
    fine, _ = sweep(measure, list(range(21)), patience=2)
    assert fine["n_skip"] == 10 and seen == list(range(13))  # ends after 11 and 12 clearly miss
    measure, seen = _curve_meter(curve)
    best, rows = coarse_to_fine(measure, list(range(21)), patience=2, coarse=4)
    assert best["n_skip"] == 10
    assert seen == coarse_seen and len(rows) < 13
    measure, seen = _curve_meter(curve)
    assert coarse_to_fine(measure, list(range(21)), 2, coarse=1)[0]["n_skip"] == 10 and len(seen) == 13


def test_coarse_to_fine_refines_beside_the_fastest_meeting_point_when_speed_is_not_monotone():
    curve = {**{k: (0, 0, 1.0 + 0.01 * k) for k in range(9)}, 4: (0, 0, 1.5), 5: (0, 0, 1.6),
             **{k: (2, 60, 2.0) for k in range(9, 17)}}
    measure, seen = _curve_meter(curve)
    best, _ = coarse_to_fine(measure, list(range(17)), patience=2, coarse=4)
    # coarse 0, 4, 8 meet, 12 and 16 clearly miss: the gap above 8 (the boundary; 9 and 10 clearly
    # miss, which ends it), and as 4 is faster than 8, both gaps beside 4
    assert seen == [0, 4, 8, 12, 16, 1, 2, 3, 5, 6, 7, 9, 10] and best["n_skip"] == 5


def test_a_threshold_sweep_ends_at_its_first_meeting_threshold_and_keeps_the_patience_rule():
    # thresholds from the highest down: 1 clearly misses, 2 is undecided, 3 meets; 4 and 5 (lower
    # thresholds: they exit later on every item) would meet too, and are slower
    curve = {0: (0, 0, 1.0), 1: (2, 50, 1.5), 2: (4, 14, 1.3), 3: (1, 2, 1.2), 4: (1, 2, 1.1), 5: (1, 2, 1.05)}
    measure, seen = _curve_meter(curve)
    best, rows = threshold_sweep(measure, list(range(6)), patience=2)
    assert seen == [0, 1, 2, 3] and best["n_skip"] == 3 and len(rows) == 4
    measure, seen = _curve_meter(curve)
    assert sweep(measure, list(range(6)), patience=2)[0]["n_skip"] == 3 and seen == list(range(6))
    misses = {**curve, 2: (2, 50, 1.3)}  # two clear misses in a row end it before any meets
    measure, seen = _curve_meter(misses)
    assert threshold_sweep(measure, list(range(6)), patience=2)[0]["n_skip"] == 0 and seen == [0, 1, 2]


# ------------------------------------------------------------------------------ ranking by predicted speedup


def _skipped(plan) -> int:
    return sum(len(p.decode.attn) + len(p.decode.ffn) for p in plan.stages.values())


class FakePredictor:
    """Predicts 1 + 0.1 per skipped unit (the measured speed's order), with a 2% half-width."""

    half_width = 0.02

    def __init__(self):
        self.calls = 0

    def predict(self, sets, rules, chunks, dense, reuse_kv=True):
        self.calls += 1
        assert all(c and len(c["ids"]) == len(c["cost"]["recall"]) for c in chunks)
        return 1.0 + 0.1 * sum(len(s.attn) + len(s.ffn) for s in sets.values())


def _ranked_search(tmp_path: Path, speed, **options) -> tuple[dict, list[dict], list[int]]:
    """The analyze #skip sweep on fake answers (agreement falls once 5 units are skipped) and fake
    timings (1 + 0.1 per unit + 0.01): the kept row, every row, and the #skip of each timing."""
    items = [Question(f"q{i}", "?", ("a", "b"), ("A", "B"), "A") for i in range(200)]
    timed = []

    def answer_counts(plan, callbacks, lo, hi):
        k = _skipped(plan)
        changed = 0 if k <= 4 else (hi - lo) // 10 if k == 5 else (hi - lo) // 3
        return _counts(hi - lo, changed, skipped=k, ids=[q.id for q in items[lo:hi]])

    def timing(plan, callbacks):
        timed.append(_skipped(plan))
        return {"speedup": 1.01 + 0.1 * _skipped(plan), "latency_s": 1.0, "timing_seconds": 1.0}

    reasoner = SimpleNamespace(cfg=SimpleNamespace(reuse_kv=True))
    opts = SearchOptions(target="agreement", max_skip=8, coarse_step=1, patience=2, **options)
    meter = litestage.CandidateMeter(reasoner, items, items[:2], [], ({"k": "answers"}, {"k": "timing"}),
                                     RowStore(tmp_path), opts, lambda msg: None, StageMemo(), speed)
    meter._answer_counts, meter._timing, meter.target = answer_counts, timing, AGREE
    ranking = [("attn", j) for j in range(12)]
    state = litestage.SearchState()
    rows = litestage._budget_sweeps(meter, ranking, ["analyze"], opts, state)
    return next(r for r in rows if r["n_skip"] == state.n_skip["analyze"]), rows, timed


def test_only_finalists_by_predicted_speedup_are_timed_and_the_choice_matches_timing_every_one(tmp_path):
    exhaustive, every, timed_all = _ranked_search(tmp_path / "all", None)
    assert exhaustive["n_skip"] == 4
    assert sorted(timed_all) == sorted(r["n_skip"] for r in every if r["test"]["decision"] != "clearly misses")
    assert all(r["predicted_speedup"] is None for r in every)
    predictor = FakePredictor()
    best, rows, timed = _ranked_search(tmp_path / "ranked", predictor)
    assert best["n_skip"] == exhaustive["n_skip"]
    assert timed == [4]  # #skip 4 alone: 1.4 predicted, 1.3 (#skip 3) lies outside its 2% interval
    assert best["speedup"] == pytest.approx(1.41) and best["predicted_speedup"] == pytest.approx(1.4)
    untimed = [r for r in rows if r is not best]
    assert untimed and all(r["speedup"] is None for r in untimed)
    assert all(r["predicted_speedup"] is not None for r in rows if r["test"]["decision"] != "clearly misses")
    # each row that does not clearly miss is predicted (and the first chunks for the speed stop)
    assert predictor.calls >= sum(r["test"]["decision"] != "clearly misses" for r in rows)


class SlowingPredictor(FakePredictor):
    """Skipping makes the answers longer: 1 - 0.1 per skipped unit."""

    def predict(self, sets, rules, chunks, dense, reuse_kv=True):
        return 2.0 - super().predict(sets, rules, chunks, dense, reuse_kv)


def test_the_meter_stops_candidates_slower_than_the_accepted_setting_after_one_chunk(tmp_path):
    best, rows, timed = _ranked_search(tmp_path, SlowingPredictor())
    assert best["n_skip"] == 0 and timed == [0]
    others = [r for r in rows if r["n_skip"] and r["test"]["decision"] != "clearly misses"]
    assert [r["n_skip"] for r in others] == [1, 2, 3, 4, 5]  # 6 and 7 clearly miss: the sweep ends
    assert all(r["test"]["decision"] == "slower" and r["stopped"]["n"] == 48 for r in others)
    assert all(r["speedup"] is None and "slower" in r["timing"] for r in others)
    # without a fit nothing is stopped for speed: those that do not clearly miss go past the first chunk
    _, rows, _ = _ranked_search(tmp_path / "plain", None)
    assert not [r for r in rows if r["test"]["decision"] == "slower"]
    assert all(r["stopped"]["n"] > 48 for r in rows if r["test"]["decision"] != "clearly misses")


def test_timed_candidates_are_also_timed_at_batch_b_on_the_items_they_answered(tmp_path, monkeypatch):
    from litestage_bench.evaluation import runner
    calls = []

    def throughput_timing(reasoner, pipelines, items, results, settings, seed, label):
        calls.append((label, [q.id for q in items], {r.id: r.prediction for r in results}, settings))
        return {"throughput_speedup": 1.3, "throughput_speedup_ci95": [1.2, 1.4], "batch_size": settings[0],
                "decomposition": {"total": {"token_factor": 1.0}}}
    monkeypatch.setattr(runner, "throughput_timing", throughput_timing)
    best, rows, timed = _ranked_search(tmp_path, FakePredictor(), throughput=(8, 4, 2))
    assert timed == [4] and [c[0] for c in calls] == ["search analyze #skip=4"]  # the finalist; dense is not
    label, ids, answers, settings = calls[0]
    assert settings == (8, 4, 2) and len(ids) == best["flips"]["n"] and set(answers) == set(ids)
    assert best["throughput_speedup"] == 1.3 and best["throughput_batch"] == 8
    assert len(list(tmp_path.glob("throughput-*.json"))) == 1
    _ranked_search(tmp_path, FakePredictor(), throughput=(8, 4, 2))  # the same search again: read back
    assert len(calls) == 1
    with pytest.raises(UserError, match="first look"):
        SearchOptions(throughput=(8, 8, 1)).check()  # 64 items: more than the first look's 48


def test_finalists_are_the_best_prediction_and_every_interval_reaching_it():
    def row(p, decision="meets"):
        return {"predicted_speedup": p, "test": {"decision": decision}}
    accepted, close, far, fast_miss = row(1.0, "undecided"), row(1.45), row(1.2), row(2.0, "undecided")
    best = row(1.5)
    assert finalists([accepted, close, best, far, fast_miss], 0.05) == [close, best]
    assert finalists([accepted, close, best, far], 0.3) == [accepted, close, best, far]
    assert finalists([accepted, row(None), best], 0.01)[0]["predicted_speedup"] is None  # unpredicted: timed


def test_a_committed_latency_fit_is_found_by_model_numerics_device_and_cpu_and_predicts(tmp_path):
    group = {"model": "smollm2-135m", "numerics": "float32", "device": "cpu", "cpu": "AMD EPYC"}
    shutil.copy(FIT, tmp_path / FIT.name)
    logs = []
    speed = find_predictor("auto", group, "obqa", logs.append, root=tmp_path)
    held_out = json.loads(FIT.read_text())["fit"]["speedup_error_held_out"]["p95"]
    assert isinstance(speed, SpeedPredictor) and speed.half_width == held_out
    assert speed.describe()["half_width_from"] == "speedup_error_held_out.p95"
    assert find_predictor("auto", {**group, "cpu": "Other CPU"}, "obqa", logs.append, root=tmp_path) is None
    assert find_predictor("auto", group, "arc", logs.append, root=tmp_path) is None  # no arc records
    assert find_predictor(None, group, "obqa", logs.append, root=tmp_path) is None
    assert find_predictor(str(tmp_path / FIT.name), group, "obqa", logs.append).source.endswith(FIT.name)
    with pytest.raises(UserError, match="not qwen"):
        find_predictor(str(tmp_path / FIT.name), {**group, "model": "qwen"}, "obqa", logs.append)
    with pytest.raises(UserError, match="does not exist"):
        find_predictor(str(tmp_path / "missing.json"), group, "obqa", logs.append)
    # from an accuracy pass's columns: the same tokens with half the layers skipped in Analyze are faster
    dense = [ItemResult(f"q{i}", "A", "A", "cloze", True, float("nan"), {}, {"recall": 40, "analyze": 60,
                        "summarize": 12}, option_scores={"cloze": [0.0] * 4}) for i in range(3)]
    cols = {"ids": [d.id for d in dense], "tokens": {s: [dense[0].tokens[s]] * 3 for s in STAGES},
            "cost": {"recall": [1.0] * 3, "analyze": [0.5] * 3, "summarize": [1.0] * 3}}
    half = SkipSet.layers(range(15))
    everywhere = {s: [0.5] * 3 for s in STAGES}
    assert speed.predict({}, {}, [{**cols, "cost": {s: [1.0] * 3 for s in STAGES}}], dense) == pytest.approx(1.0)
    analyze = speed.predict({"analyze": half}, {}, [cols], dense)
    assert 1.0 < analyze < speed.predict({s: half for s in STAGES}, {}, [{**cols, "cost": everywhere}], dense)
    assert speed.predict({"analyze": half}, {}, [None], dense) is None  # a chunk without columns


# ------------------------------------------------------------------------------ the command line


def test_search_flags_set_the_new_options_and_the_policy_records_them(tmp_path, capsys):
    from litestage_bench.cli import build_parser, main
    base = ["search", "--method", "litestage", "--bench", "obqa", "--out", "p.json"]
    opts = litestage.options_from_args(build_parser().parse_args(base))
    assert (opts.coarse_step, opts.efficacy_share, opts.latency_fit) == (4, 0.2, "auto")
    opts = litestage.options_from_args(build_parser().parse_args(
        [*base, "--coarse-step", "1", "--efficacy-share", "0", "--latency-fit", "none"]))
    assert (opts.coarse_step, opts.efficacy_share, opts.latency_fit) == (1, 0.0, None)
    opts.check()
    assert {"coarse_step", "efficacy_share", "latency_fit"} <= set(asdict(opts))
    assert litestage.options_from_args(build_parser().parse_args([*base, "--latency-fit", "f.json"])).latency_fit == "f.json"
    for bad in (["--efficacy-share", "1"], ["--efficacy-share", "-0.1"], ["--coarse-step", "0"]):
        with pytest.raises(UserError):
            build_parser().parse_args([*base, *bad])
    with pytest.raises(UserError, match="efficacy share"):
        SearchOptions(efficacy_share=1.0).check()
    # a fit file that is not there is refused before the model loads
    out = tmp_path / "p.json"
    assert main([*base[:-1], str(out), "--latency-fit", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0] and not out.exists()
    assert build_parser().parse_args([*base, "--answer-rule", "regex"]).answer_rule == "regex"
    assert main([*base[:-1], str(out), "--answer-rule", "vote"]) == 2  # refused before the model loads
    assert "unknown answer rule 'vote'" in capsys.readouterr().err and not out.exists()
