"""The reasoner's fast paths against its plain ones, on a tiny random model with SmolLM2's tokenizer.

Each pair must agree in float32: header cache on/off, several questions per batch vs one at a time,
cross-stage KV reuse on/off (dense and a static plan), options batched vs one at a time, and the
executor reasoner vs the naive `model.generate` pipeline with multi-token, left-padded cloze options.
Outputs and predictions must be equal and option scores equal within a float32 tolerance (a small
leak that does not flip an argmax still fails).
"""
from __future__ import annotations

import math

import pytest
from tiny_reasoner import QUESTIONS, STAGEWISE, STATIC, reasoner

from litestage_bench.engine.plan import DENSE
from litestage_bench.evaluation.header_cache import shared_header_ids
from litestage_bench.studies.naive import NaiveReasoner

SCORE_ATOL = 1e-4


def assert_same(a, b) -> None:
    assert a.outputs == b.outputs
    assert a.predictions_by_rule == b.predictions_by_rule
    assert a.tokens == b.tokens
    for rule in ("letter", "cloze"):
        assert a.option_scores[rule] == pytest.approx(b.option_scores[rule], abs=SCORE_ATOL)


def test_shared_header_is_a_prefix_of_every_header(model, tokenizer):
    r = reasoner(model, tokenizer)
    ids = shared_header_ids(r.prompts)
    assert len(ids) > 20
    for q in QUESTIONS:
        assert r.prompts.header(q)[:len(ids)] == ids


@pytest.mark.parametrize("plan", [DENSE, STATIC, STAGEWISE], ids=["dense", "static", "stagewise"])
def test_header_cache_changes_nothing(model, tokenizer, plan):
    with_cache, without = reasoner(model, tokenizer), reasoner(model, tokenizer, header_cache=False)
    for q in QUESTIONS:
        assert_same(with_cache.solve(q, plan), without.solve(q, plan))


@pytest.mark.parametrize("plan", [DENSE, STATIC, STAGEWISE], ids=["dense", "static", "stagewise"])
def test_batched_questions_equal_batch_one(model, tokenizer, plan):
    r = reasoner(model, tokenizer)
    batched = r.solve_batch(QUESTIONS, plan)
    for q, b in zip(QUESTIONS, batched):
        assert_same(r.solve(q, plan), b)
        assert math.isnan(b.latency_s) and b.stage_latency_s == {}


@pytest.mark.parametrize("plan", [DENSE, STATIC], ids=["dense", "static"])
def test_kv_reuse_equals_reprefill(model, tokenizer, plan):
    reuse, reprefill = reasoner(model, tokenizer), reasoner(model, tokenizer, reuse_kv=False)
    for q in QUESTIONS:
        assert_same(reuse.solve(q, plan), reprefill.solve(q, plan))
    assert_same(reuse.solve_batch(QUESTIONS, plan)[0], reprefill.solve_batch(QUESTIONS, plan)[0])


def test_options_one_at_a_time_equal_one_batch(model, tokenizer):
    batched, single = reasoner(model, tokenizer), reasoner(model, tokenizer, batch_options=False)
    for q in QUESTIONS:
        assert_same(batched.solve(q, STATIC), single.solve(q, STATIC))


def test_unshared_prefix_equals_shared(model, tokenizer):
    shared, unshared = reasoner(model, tokenizer), reasoner(model, tokenizer, share_prefix=False)
    for q in QUESTIONS:
        assert_same(shared.solve(q, DENSE), unshared.solve(q, DENSE))


def test_executor_reasoner_equals_the_naive_pipeline(model, tokenizer):
    """Multi-token options of unequal length are scored as one left-padded batch; the naive
    pipeline scores each option with its own full forward."""
    r = reasoner(model, tokenizer)
    naive = NaiveReasoner(model, tokenizer, r.prompts, r.cfg)
    assert len({len(r.prompts.ids(f" {o}")) for o in QUESTIONS[0].options}) > 1  # really unequal widths
    for q in QUESTIONS:
        assert r.solve(q, DENSE).predictions_by_rule == naive.solve(q)[0]


def test_cost_fraction_does_not_depend_on_the_header_cache(model, tokenizer):
    with_cache, without = reasoner(model, tokenizer), reasoner(model, tokenizer, header_cache=False)
    a, b = with_cache.solve(QUESTIONS[0], STAGEWISE), without.solve(QUESTIONS[0], STAGEWISE)
    assert a.executed_cost_fraction == pytest.approx(b.executed_cost_fraction, abs=1e-12)
    assert a.executed_cost_fraction["recall"] < 1.0


def test_the_one_step_answer_from_the_header_cache_equals_a_whole_prefill(model, tokenizer):
    with_cache, without = reasoner(model, tokenizer), reasoner(model, tokenizer, header_cache=False)
    for q in QUESTIONS:
        (fast, fast_scores), (plain, plain_scores) = with_cache.one_step_scored(q), without.one_step_scored(q)
        assert fast == plain
        for rule in ("letter", "cloze"):
            assert fast_scores[rule] == pytest.approx(plain_scores[rule], abs=SCORE_ATOL)
