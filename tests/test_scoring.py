"""`SkipExecutor.extend` (answer scoring after a stage) against no-cache forwards, and the batched
cloze score against the per-option naive one."""
from __future__ import annotations

import pytest
import torch
from tiny_models import ARCHS, PROMPT, all_logits, assert_close, tiny_model, without_layer

from litestage_bench.engine.executor import CostMeter, SkipExecutor
from litestage_bench.engine.kvcache import SkipKVCache
from litestage_bench.engine.plan import SkipSet, StagePlan
from litestage_bench.evaluation import answers

CONTINUATIONS = [[70, 71, 72, 73], [74], [75, 76]]  # unequal lengths: rows get left padding
PLANS = {
    "dense": StagePlan(),
    "static": StagePlan.static(SkipSet.of(attn=[1], ffn=[2, 3])),
    "scaled": StagePlan(prefill=SkipSet.of(attn=[2], ffn=[1]), decode=SkipSet.of(attn=[2], ffn=[1]),
                        attn_scale={2: 0.7}, ffn_scale={1: 1.2}),
}


@pytest.fixture(scope="module", params=ARCHS)
def model(request) -> torch.nn.Module:
    return tiny_model(request.param)


def prefilled(ex: SkipExecutor, ids: list[int], plan: StagePlan) -> SkipKVCache:
    """A batch-1 cache holding `ids`, computed under the plan's prefill set."""
    cache = ex.new_cache(1)
    x = torch.tensor([ids], device=ex.device)
    ex.forward(cache, x, torch.ones_like(x, dtype=torch.bool), plan.prefill, plan, CostMeter(), logits="none")
    return cache


def reference(model: torch.nn.Module, ex: SkipExecutor, ids: list[int], plan: StagePlan) -> torch.Tensor:
    """[len(ids), vocab] logits of one no-cache forward: transformers' own for the dense plan,
    the executor's under a static plan (its prefill and decode sets are equal)."""
    if plan.is_dense():
        with torch.inference_mode():
            return model(torch.tensor([ids]), use_cache=False).logits[0].float()
    assert plan.prefill == plan.decode
    return all_logits(ex, ids, plan)


@pytest.mark.parametrize("plan_name", list(PLANS))
def test_extend_one_row_equals_a_no_cache_forward(model, plan_name):
    plan, ex = PLANS[plan_name], SkipExecutor(model)
    cont = CONTINUATIONS[0]
    ref = reference(model, ex, PROMPT + cont, plan)
    cache = prefilled(ex, PROMPT, plan)
    assert_close(ex.extend(cache, [cont[:1]], plan, CostMeter())[0], ref[len(PROMPT):len(PROMPT) + 1])
    # a second extend continues where the first one ended; "last" is the last slot of "all"
    assert_close(ex.extend(cache, [cont[1:]], plan, CostMeter())[0], ref[len(PROMPT) + 1:])
    assert cache.length == len(PROMPT + cont)
    again = prefilled(ex, PROMPT, plan)
    assert_close(ex.extend(again, [cont], plan, CostMeter(), logits="last")[0], ref[-1:])


@pytest.mark.parametrize("plan_name", list(PLANS))
def test_extend_left_padded_rows_equal_no_cache_forwards(model, plan_name):
    plan, ex = PLANS[plan_name], SkipExecutor(model)
    rows = prefilled(ex, PROMPT, plan).repeat(len(CONTINUATIONS))
    block = ex.extend(rows, CONTINUATIONS, plan, CostMeter())
    width = max(map(len, CONTINUATIONS))
    assert block.shape[:2] == (len(CONTINUATIONS), width)
    for i, cont in enumerate(CONTINUATIONS):
        ref = reference(model, ex, PROMPT + cont, plan)[len(PROMPT):]
        assert_close(block[i, width - len(cont):], ref)
    # each row keeps extending on its own, past the padding of the others
    nxt = ex.extend(rows, [[80]] * len(CONTINUATIONS), plan, CostMeter(), logits="last")
    for i, cont in enumerate(CONTINUATIONS):
        assert_close(nxt[i, -1], reference(model, ex, PROMPT + cont + [80], plan)[-1])


def test_extend_under_a_whole_layer_skip_equals_the_pruned_model(model):
    ex = SkipExecutor(model)
    plan = StagePlan.static(SkipSet.layers([2]))
    pruned = without_layer(model, 2)
    rows = prefilled(ex, PROMPT, plan).repeat(len(CONTINUATIONS))
    block = ex.extend(rows, CONTINUATIONS, plan, CostMeter())
    width = block.shape[1]
    for i, cont in enumerate(CONTINUATIONS):
        with torch.inference_mode():
            ref = pruned(torch.tensor([PROMPT + cont]), use_cache=False).logits[0, len(PROMPT):]
        assert_close(block[i, width - len(cont):], ref)


@pytest.mark.parametrize("plan_name", ["dense", "static"])
def test_extend_after_a_length_capped_generation(model, plan_name):
    """The reasoner's scoring path: the stage's cache lacks the last sampled token, which is fed
    with the scoring context."""
    plan, ex = PLANS[plan_name], SkipExecutor(model)
    gen = ex.generate([PROMPT], plan, 5)
    assert gen.stopped == ["length"] and gen.cache.length == len(PROMPT) + 4
    context = gen.unfed_tokens(0) + [60, 61]
    got = ex.extend(gen.cache, [context], plan, CostMeter())[0]
    ref = reference(model, ex, PROMPT + gen.tokens[0] + [60, 61], plan)
    assert_close(got, ref[-len(context):])


OPTIONS = [[30, 31, 32], [33], [34, 35], [36, 37, 38, 39]]  # multi-token options of unequal lengths


def naive_cloze_scores(model, ex: SkipExecutor, context: list[int], plan: StagePlan) -> list[float]:
    """Per option, one full forward over context + option (the naive pipeline's way)."""
    scores = []
    for ids in OPTIONS:
        logits = reference(model, ex, context + ids, plan)
        scores.append(answers.mean_logprob(logits[len(context) - 1], logits[len(context):], ids))
    return scores


@pytest.mark.parametrize("plan_name", ["dense", "static"])
def test_batched_cloze_equals_option_by_option(model, plan_name):
    plan, ex = PLANS[plan_name], SkipExecutor(model)
    context = PROMPT + [60, 61]
    cache = prefilled(ex, PROMPT, plan)
    first = ex.extend(cache, [[60, 61]], plan, CostMeter(), logits="last")[0, -1]
    block = ex.extend(cache.repeat(len(OPTIONS)), OPTIONS, plan, CostMeter())
    got = answers.option_logprobs(first, block, OPTIONS)
    want = naive_cloze_scores(model, ex, context, plan)
    assert got == pytest.approx(want, abs=1e-5)
    labels = tuple("ABCD")
    assert answers.cloze_answer(got, labels) == answers.cloze_answer(want, labels)
