"""The early-exit derivation study: a threshold's stage output from one exit-off trace."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from test_reasoner import assert_same
from tiny_reasoner import QUESTIONS, STAGEWISE, calibration_splits, reasoner, split_loader

from litestage_bench.engine.early_exit import ConfidenceExit, ConfidenceRecorder, ExitRule
from litestage_bench.engine.plan import STAGES, SkipPlan, SkipSet, StagePlan
from litestage_bench.evaluation.reasoner import ReasonerConfig, StageMemo
from litestage_bench.evaluation.runner import evaluate_items
from litestage_bench.methods import litestage
from litestage_bench.methods.litestage import SearchOptions
from litestage_bench.engine.early_exit import exit_cut, fed_count
from litestage_bench.studies.exit_trace import measure


@pytest.mark.parametrize("threshold, expected", [
    (0.5, ([5, 6, 7], "callback")),  # the first full window at or below it: that step's token dropped
    (0.25, ([5, 6, 7, 8], "callback")),
    (0.15, ([5, 6, 7, 8, 9, 2], "stop")),  # it fires on the row's own stop token: the row ends as it did
    (0.05, ([5, 6, 7, 8, 9, 2], "stop")),  # never at or below
])
def test_a_row_is_cut_at_its_first_window_at_or_below_the_threshold(threshold, expected):
    row = {"tokens": [5, 6, 7, 8, 9, 2], "means": {3: 0.4, 4: 0.2, 5: 0.1}}
    assert exit_cut(row, threshold, {2}) == expected


def test_a_row_that_ran_to_its_length_limit_ends_by_length():
    assert exit_cut({"tokens": [5, 6, 7], "means": {2: 0.9}}, 0.5, {2}) == ([5, 6, 7], "length")


@pytest.mark.parametrize("stage", ["recall", "analyze"])
def test_on_the_tiny_model_every_derived_run_equals_the_real_run(tiny_folder, tmp_path, stage):
    """Thresholds that stop every row at its first full window (1.0), none (0.0) and some rows
    (3.8e-5): each derived item equals the one the threshold's own run gives, though rows leave the
    batch at other steps than in the exit-off run."""
    config = ReasonerConfig(answer_rule="cloze", max_new_tokens={"recall": 8, "analyze": 10, "summarize": 8})
    policy = {"method": "litestage", "model": str(tiny_folder), "numerics": "float32", "bench": "obqa",
              "options": {"limit": 6, "timed": 2, "seed": 0, "exit_window": 2, "exit_confidence": "max_prob"},
              "reasoner_config": config.to_dict(),
              "stages": {s: {"skip": {"attn": [1], "ffn": []}} for s in ("recall", "analyze", "summarize")},
              "exit_thresholds_swept": {stage: [1.0, 0.0, 3.8e-5]}}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    table = measure(str(path), stage, 6, 3)
    by_threshold = {row[1]: row for row in table}
    assert all(row[4] == 0 for row in table), table
    assert by_threshold["1"][3] == by_threshold["1"][2] > 0 and by_threshold["0"][3] == 0
    # the random model's confidences sit near 1 / vocabulary: this one ends some items' stage sooner, not all
    assert 0 < by_threshold["3.8e-05"][3] < by_threshold["3.8e-05"][2]


def test_fed_count_is_the_decode_steps_a_row_was_live_in():
    assert fed_count([5, 6, 2], "stop") == 2  # its stop token is not fed back
    assert fed_count([5, 6], "callback") == 2
    assert fed_count([5, 6, 7], "length") == 2  # the last sampled id is never fed
    assert fed_count([2], "stop") == fed_count([], "callback") == 0


# ------------------------------------------------------------------- the search's memo derives exit runs

def _thresholds(r, plan, stage):
    """A threshold that stops every row at its first full window, one that stops none, and the
    median window mean (stops some): from a recorder on the real exit-off run."""
    recorder = ConfidenceRecorder(2)
    r.solve_batch(QUESTIONS, plan, {stage: recorder})
    means = sorted(recorder.means)
    return [means[-1], means[0] - 1.0, means[len(means) // 2]]


# skips in decode only: a decode step costs another fraction than a prompt token, so the executed
# cost fraction changes with the steps a cut row no longer takes
DECODE_ONLY = SkipPlan({s: StagePlan(decode=SkipSet.of(attn=[1], ffn=[2])) for s in STAGES}, "decode-only")


@pytest.mark.parametrize("plan", [STAGEWISE, DECODE_ONLY], ids=["stagewise", "decode-only"])
@pytest.mark.parametrize("stage", ["recall", "analyze"])
def test_a_memo_derives_a_stages_exit_runs_equal_to_their_real_runs(model, tokenizer, stage, plan):
    """With `exit_trace`, the exit-off run keeps its trace and every threshold's run of the stage is
    derived from it, not generated: its items equal the real run's (outputs, tokens, answers and
    executed cost), and only the later stages are computed."""
    r = reasoner(model, tokenizer)
    memo = StageMemo(exit_trace=(2, "max_prob"))
    off = r.solve_batch(QUESTIONS, plan, memo=memo)
    assert (memo.misses, memo.derived) == (3, 0)
    later = 2 if stage == "recall" else 1  # the stages after it, computed per threshold
    cut_some = False
    for n, threshold in enumerate(_thresholds(r, plan, stage), 1):
        callbacks = {stage: ConfidenceExit(ExitRule(2, threshold))}
        with memo.deriving(stage):
            derived = r.solve_batch(QUESTIONS, plan, callbacks, memo=memo)
        assert (memo.misses, memo.derived) == (3 + n * later, n)
        real = r.solve_batch(QUESTIONS, plan, {stage: ConfidenceExit(ExitRule(2, threshold))})
        for a, b in zip(derived, real):
            assert_same(a, b)
            assert a.executed_cost_fraction == pytest.approx(b.executed_cost_fraction, rel=1e-9)
        cut_some |= any(a.tokens[stage] < o.tokens[stage] for a, o in zip(derived, off))
    assert cut_some


def test_exit_runs_are_derived_only_with_exit_trace_and_inside_deriving(model, tokenizer):
    r = reasoner(model, tokenizer)
    for memo, stage in [(StageMemo(), "analyze"), (StageMemo(exit_trace=(2, "max_prob")), "recall")]:
        r.solve_batch(QUESTIONS, STAGEWISE, memo=memo)
        with memo.deriving(stage):
            r.solve_batch(QUESTIONS, STAGEWISE, {"analyze": ConfidenceExit(ExitRule(2, 1.0))}, memo=memo)
        assert (memo.misses, memo.derived) == (5, 0)


def test_an_exit_run_asked_first_computes_its_exit_off_run_once(model, tokenizer):
    """No exit-off run kept (a resumed search): the first threshold computes it with its trace, the
    next derives from it; a rule of another window is computed as usual."""
    r = reasoner(model, tokenizer)
    memo = StageMemo(exit_trace=(2, "max_prob"))
    with memo.deriving("analyze"):
        r.solve_batch(QUESTIONS, STAGEWISE, {"analyze": ConfidenceExit(ExitRule(2, 1.0))}, memo=memo)
        assert (memo.misses, memo.derived) == (3, 1)  # recall, analyze exit-off, summarize
        r.solve_batch(QUESTIONS, STAGEWISE, {"analyze": ConfidenceExit(ExitRule(2, 0.5))}, memo=memo)
        assert (memo.misses, memo.derived) == (4, 2)
        r.solve_batch(QUESTIONS, STAGEWISE, {"analyze": ConfidenceExit(ExitRule(3, 0.5))}, memo=memo)
        assert (memo.misses, memo.derived) == (6, 2)


def test_a_searchs_exit_sweeps_derive_their_runs_and_record_what_real_runs_give(model, tokenizer, monkeypatch,
                                                                                tmp_path):
    """A whole (tiny) float32 search: its early-exit candidates' recall and analyze runs are derived
    (counted in `stage_runs_derived`), and every exit candidate's answers, agreement and tokens are
    those of its plan run for real on the same items, without the memo."""
    splits = calibration_splits()
    monkeypatch.setattr(litestage, "load_split", split_loader(splits))
    r = reasoner(model, tokenizer)
    session = SimpleNamespace(reasoner=lambda bench, cfg, data_dir=None: r, executor=r.ex,
                              loaded=SimpleNamespace(name="tiny", source="test", dtype="float32", numerics="float32"))
    # every threshold of every stage is measured (no candidate meets: a sweep ends at the first that does)
    opts = SearchOptions(target="agreement", min_agreement=1.0, limit=6, timed=2, batch_size=3, max_skip=2,
                         patience=9, harm_items=2, exit_window=2)
    policy = litestage.search(session, "obqa", opts, r.cfg, store_dir=tmp_path, log=lambda m: None)
    exits = [c for c in policy["candidates"] if c.get("threshold") is not None]
    derived = sum(c["stage_runs_derived"] for c in exits)
    assert derived == policy["search_cost"]["stage_runs_derived"] > 0
    dense = evaluate_items(r, SkipPlan(), {}, splits["calib"][:6], 3, progress=False)
    for c in exits:
        items = splits["calib"][:c["flips"]["n"]]
        plan = litestage.plan_from_sets({s: SkipSet.from_dict(c["sets"][s]) for s in STAGES})
        real = evaluate_items(r, plan, litestage.exit_callbacks({s: ExitRule.from_dict(c["exits"][s]) for s in STAGES}),
                              items, 3, progress=False)
        assert c["tokens"] == {s: round(sum(x.tokens[s] for x in real) / len(real), 2) for s in STAGES}
        assert c["accuracy"] == sum(x.correct for x in real) / len(real)
        assert c["agreement"] == sum(x.prediction == d.prediction for x, d in zip(real, dense)) / len(real)
