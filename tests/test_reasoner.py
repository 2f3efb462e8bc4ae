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
import torch

from litestage_bench.benchmarks import Question
from litestage_bench.demos import Demo
from litestage_bench.executor import SkipExecutor
from litestage_bench.header_cache import shared_header_ids
from litestage_bench.naive import NaiveReasoner
from litestage_bench.plan import DENSE, SkipPlan, SkipSet, StagePlan
from litestage_bench.reasoner import Reasoner, ReasonerConfig

SCORE_ATOL = 1e-4
CAPS = {"recall": 10, "analyze": 6, "summarize": 5}

QUESTIONS = [
    Question("q1", "Which would let the most heat travel through?", ("a new pair of jeans", "a steel spoon in a cafeteria",
             "a cotton candy at a store", "a calvin klein cotton hat"), ("A", "B", "C", "D"), "B"),
    Question("q2", "Where do bees make honey?", ("hive", "nest"), ("A", "B"), "A"),
    Question("q3", "Is the sun a star?", ("yes", "no"), ("A", "B"), "A"),
]
DEMO = Demo(Question("d1", "What melts ice fastest?", ("salt", "sand"), ("A", "B"), "A"),
            recall="Salt lowers the freezing point of water.",
            analyses={"A": "salt melts ice.", "B": "sand does not melt ice."}, answer="A")

STATIC = SkipPlan.uniform(StagePlan.static(SkipSet.of(attn=[1], ffn=[2])), ("recall", "analyze", "summarize"), "static")
STAGEWISE = SkipPlan({"recall": StagePlan.static(SkipSet.of(ffn=[1])),
                      "analyze": StagePlan.static(SkipSet.of(attn=[2])),
                      "summarize": StagePlan.static(SkipSet.layers([3]))}, "stagewise")


@pytest.fixture(scope="module")
def tokenizer():
    from litestage_bench.models import load_model
    return load_model("smollm2-135m", dtype="float32").tokenizer


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         attn_implementation="sdpa", tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def reasoner(model, tokenizer, **overrides) -> Reasoner:
    cfg = ReasonerConfig(chat=True, max_new_tokens=dict(CAPS), answer_rule="cloze", **overrides)
    return Reasoner(SkipExecutor(model), tokenizer, [DEMO], cfg)


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
