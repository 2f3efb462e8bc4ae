"""Drafted (self-speculative) stages in the reasoner give dense's results, item for item.

On the tiny random llama with SmolLM2's tokenizer (float32): solving at batch 1, in batches of
questions, with options one at a time, and with the shared-prefix / KV-reuse fast paths, a plan
whose stages carry drafts answers exactly as dense: same outputs, predictions and tokens, and
option scores within float32 rounding; every stage records its drafting.
"""
from __future__ import annotations

import pytest
from test_reasoner import assert_same
from tiny_reasoner import DRAFTED, QUESTIONS, reasoner

from litestage_bench.engine.plan import DENSE, STAGES, Draft, SkipPlan, SkipSet, StagePlan


def check_drafting(item, plan: SkipPlan) -> None:
    for stage in STAGES:
        s = item.speculative[stage]
        assert 0 <= s["accepted"] <= s["drafted"] <= plan.for_stage(stage).draft.k * s["verify_steps"]
        assert s["verify_steps"] >= 1 and min(s["draft_s"], s["verify_s"]) >= 0.0


def test_drafted_solve_equals_dense(model, tokenizer):
    r = reasoner(model, tokenizer)
    for q in QUESTIONS:
        item = r.solve(q, DRAFTED)
        assert_same(item, r.solve(q, DENSE))
        check_drafting(item, DRAFTED)
        assert r.solve(q, DENSE).speculative == {}


def test_drafted_batches_equal_dense(model, tokenizer):
    r = reasoner(model, tokenizer)
    for drafted, dense in zip(r.solve_batch(QUESTIONS, DRAFTED), r.solve_batch(QUESTIONS, DENSE)):
        assert_same(drafted, dense)
        check_drafting(drafted, DRAFTED)


@pytest.mark.parametrize("setting", ["batch_options", "share_prefix", "reuse_kv", "header_cache"])
def test_drafted_equals_dense_without_each_fast_path(model, tokenizer, setting):
    r = reasoner(model, tokenizer, **{setting: False})
    for q in QUESTIONS[:2]:
        assert_same(r.solve(q, DRAFTED), r.solve(q, DENSE))


def test_a_drafted_stage_continues_a_dense_stage_cache(model, tokenizer):
    """Drafted stages compute dense keys/values, so they share the dense signature (KV reuse)."""
    mixed = SkipPlan({"analyze": DRAFTED.for_stage("analyze")}, "mixed")
    assert mixed.for_stage("analyze").uniform_signature() == DENSE.for_stage("analyze").uniform_signature()
    r = reasoner(model, tokenizer)
    item = r.solve(QUESTIONS[0], mixed)
    assert_same(item, r.solve(QUESTIONS[0], DENSE))
    assert set(item.speculative) == {"analyze"}


def test_drafted_stage_rejects_callbacks_and_own_skips(model, tokenizer):
    r = reasoner(model, tokenizer)
    with pytest.raises(ValueError, match="no token callbacks"):
        r.solve(QUESTIONS[0], DRAFTED, {"recall": lambda *a: None})
    bad = StagePlan(decode=SkipSet.of(attn=[1]), draft=Draft(StagePlan(decode=SkipSet.of(attn=[2]))))
    with pytest.raises(Exception, match="must compute dense"):
        bad.validate(4)


def test_draft_round_trips_through_json():
    for stage in STAGES:
        plan = DRAFTED.for_stage(stage)
        assert StagePlan.from_dict(plan.to_dict()) == plan
    assert SkipPlan.from_dict(DRAFTED.to_dict()) == DRAFTED
