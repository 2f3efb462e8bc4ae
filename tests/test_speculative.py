"""Self-speculative decoding (engine/speculative.py) is dense greedy decoding, token for token.

Random drafts (skip sets, schedules, replacement factors), draft lengths, prompts, length caps,
stop tokens and confidence thresholds on tiny random models of every family: the tokens, the stop
reason and the cache left behind equal the executor's dense generation (float32).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import ARCHS, PROMPT, all_logits, assert_close, skip_sets, stage_plans, tiny_model

from litestage_bench.engine.executor import CostMeter, SkipExecutor
from litestage_bench.engine.plan import Draft, DynamicFFN, SkipSet, StagePlan
from litestage_bench.engine.speculative import generate_drafted, generate_speculative

VOCAB = 96
# schedules may re-activate an attention layer inside a draft round (the draft's fill rule)
draft_plans = stage_plans(max_from_step=8)


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return request.param, SkipExecutor(tiny_model(request.param))


def check_against_dense(ex: SkipExecutor, prompt: list[int], draft: StagePlan, max_new: int, k: int,
                        stop: set[int], min_confidence: float | None = None):
    """Speculative == dense generation (tokens, stop reason, cache contents); returns both."""
    dense = ex.generate([prompt], StagePlan(), max_new, stop_ids=stop)
    spec = generate_speculative(ex, prompt, draft, max_new, k=k, stop_ids=stop, min_confidence=min_confidence)
    assert spec.tokens == dense.tokens
    assert spec.stopped == dense.stopped
    # the cache holds exactly the prompt and the fed tokens, every layer's entries dense: appending
    # tokens gives the logits of a no-cache forward over the whole sequence
    fed = spec.fed_tokens(0)
    assert spec.cache.length == len(prompt) + len(fed)
    extra = spec.unfed_tokens(0) + [7, 19]
    got = ex.extend(spec.cache, [extra], StagePlan(), CostMeter())[0]
    assert_close(got, all_logits(ex, prompt + fed + extra)[-len(extra):])
    assert_close(spec.last_logits, dense.last_logits)
    check_stats(spec, k, min_confidence)
    return spec, dense


def check_stats(spec, k: int, min_confidence: float | None) -> None:
    s = spec.stats
    assert s.verify_steps == len(s.accept_lengths) and s.accepted == sum(s.accept_lengths)
    assert 0 <= s.accepted <= s.drafted <= k * s.verify_steps
    # every verify step yields its accepted drafts and the dense next token; only a stop token among
    # the drafts leaves that last token unused
    emitted = len(spec.tokens[0]) - 1
    unused = 1 if spec.stopped == ["stop"] and emitted == s.accepted + s.verify_steps - 1 else 0
    assert emitted == s.accepted + s.verify_steps - unused
    assert 0.0 <= s.acceptance_rate <= 1.0
    assert min(s.draft_seconds, s.verify_seconds, s.prefill_seconds) >= 0.0
    if min_confidence is None:
        assert s.confidence_stops == 0
    d = s.to_dict()
    assert d["tokens_per_step"] == pytest.approx(s.tokens_per_step)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), draft=draft_plans, k=st.integers(1, 6), max_new=st.integers(1, 24),
       prompt=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=20),
       min_confidence=st.none() | st.floats(0.0, 1.0))
def test_speculative_equals_dense_greedy(arch_model, data, draft, k, max_new, prompt, min_confidence):
    _, ex = arch_model
    free = ex.generate([prompt], StagePlan(), max_new).tokens[0]
    # a stop token that ends the dense generation at a random point (often mid-draft), a random one, or none
    stop = data.draw(st.sampled_from(["none", "hit", "random"]), label="stop kind")
    stop_ids = set()
    if stop == "hit":
        stop_ids = {free[data.draw(st.integers(0, len(free) - 1), label="stop index")]}
    elif stop == "random":
        stop_ids = {data.draw(st.integers(0, VOCAB - 1), label="stop id")}
    check_against_dense(ex, prompt, draft, max_new, k, stop_ids, min_confidence)


@settings(max_examples=10, deadline=None)
@given(data=st.data(), skip=skip_sets, k=st.integers(1, 6), max_new=st.integers(1, 16),
       prompts=st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12), min_size=2, max_size=4),
       min_confidence=st.none() | st.floats(0.0, 1.0), shared=st.booleans())
def test_batched_rows_equal_dense_batched_generation(arch_model, data, skip, k, max_new, prompts, min_confidence,
                                                      shared):
    """Rows of unequal length (left padding), optionally continuing one shared prefix, accept different
    numbers of drafts per round: tokens, stop reasons and every row's cache equal dense's batch."""
    _, ex = arch_model
    prefix = PROMPT[:6] if shared else None
    free = ex.generate(prompts, StagePlan(), max_new, prefix=prefix)
    # a stop token that some row generates (so rows stop at different rounds), or none
    stop = set()
    if data.draw(st.booleans(), label="stop"):
        row = data.draw(st.integers(0, len(prompts) - 1), label="row")
        stop = {free.tokens[row][data.draw(st.integers(0, len(free.tokens[row]) - 1), label="stop index")]}
    dense = ex.generate(prompts, StagePlan(), max_new, stop_ids=stop, prefix=prefix, keep_finished=True)
    spec = generate_drafted(ex, prompts, Draft(StagePlan(decode=skip), k, min_confidence), max_new, stop_ids=stop,
                            prefix=prefix)
    assert spec.tokens == dense.tokens and spec.stopped == dense.stopped
    extra = [spec.unfed_tokens(r) + [7, 19] for r in range(len(prompts))]
    got = ex.extend(spec.cache, extra, StagePlan(), CostMeter(), pad_id=0)
    want = ex.extend(dense.cache, extra, StagePlan(), CostMeter(), pad_id=0)
    for r, e in enumerate(extra):  # left-padded: each row's real tokens are its last len(e) slots
        assert_close(got[r, -len(e):], want[r, -len(e):])
    for r, tokens in enumerate(dense.tokens):  # dense's last logits are a row's own only if it ran to the end
        if len(tokens) == dense.steps:
            assert_close(spec.last_logits[r], dense.last_logits[r])
    per_token = sum(ex.arch.attn_flops) + sum(ex.arch.ffn_flops)
    for r, s in enumerate(spec.row_stats):
        assert 0 <= s.accepted <= s.drafted <= k * s.verify_steps
        assert len(spec.tokens[r]) - 1 <= s.accepted + s.verify_steps
        # a batched forward's cost is shared by the tokens each row fed: a row pays for its own drafts
        assert s.draft_cost.total == pytest.approx(s.drafted * per_token)
        assert s.verify_cost.total == pytest.approx((s.verify_steps + s.drafted) * per_token)


def test_batched_drafts_need_a_static_draft():
    ex = SkipExecutor(tiny_model("llama"))
    scheduled = StagePlan(decode=SkipSet.of(ffn=[1]), schedule=((2, SkipSet.of(ffn=[2])),))
    with pytest.raises(ValueError, match="schedule"):
        generate_drafted(ex, [PROMPT, PROMPT[:5]], Draft(scheduled, 2), 8)


def test_dense_generate_of_transformers(arch_model):
    """Sanity: speculative tokens equal transformers' own greedy `generate`."""
    arch, ex = arch_model
    spec = generate_speculative(ex, PROMPT, StagePlan.static(SkipSet.of(attn=[1], ffn=[2])), 16, k=3)
    with torch.inference_mode():  # a fresh copy keeps transformers' own attention function
        ref = tiny_model(arch).generate(torch.tensor([PROMPT]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                                        eos_token_id=None, pad_token_id=0)
    assert spec.tokens[0] == ref[0, len(PROMPT):].tolist()


def test_stop_token_inside_an_accepted_draft():
    ex = SkipExecutor(tiny_model("qwen2"))
    free = ex.generate([PROMPT], StagePlan(), 20).tokens[0]
    cut = next(i for i in range(2, 20) if free[i] not in free[:i])  # first occurrence: the stop hits there
    # a dense draft is always accepted, so with k=6 the stop token is drafted and accepted mid-round,
    # drafting ends there, and the verifier's next token goes unused
    spec, _ = check_against_dense(ex, PROMPT, StagePlan(), 20, 6, {free[cut]})
    assert spec.tokens[0] == free[:cut + 1] and spec.stopped == ["stop"]
    assert spec.stats.accept_lengths == [cut] and spec.stats.drafted == cut


@pytest.mark.parametrize("k", [1, 4, 6])
def test_a_dense_draft_is_always_accepted(k):
    ex = SkipExecutor(tiny_model("qwen2"))
    spec, _ = check_against_dense(ex, PROMPT, StagePlan(), 20, k, set())
    s = spec.stats
    assert s.acceptance_rate == 1.0
    assert s.verify_steps == math.ceil(19 / (k + 1))  # the first token comes from the prefill


def test_confidence_threshold_ends_draft_rounds_early():
    ex = SkipExecutor(tiny_model("llama"))
    draft = StagePlan.static(SkipSet.of(ffn=[2]))
    full, _ = check_against_dense(ex, PROMPT, draft, 24, 6, set())
    # no softmax reaches probability 1: every round ends after its first draft, still exact
    timid, _ = check_against_dense(ex, PROMPT, draft, 24, 6, set(), min_confidence=1.0)
    assert all(n <= 1 for n in timid.stats.accept_lengths)
    assert timid.stats.verify_steps - 1 <= timid.stats.drafted <= timid.stats.verify_steps
    assert timid.stats.confidence_stops == timid.stats.drafted
    assert timid.stats.drafted < full.stats.drafted
    never, _ = check_against_dense(ex, PROMPT, draft, 24, 6, set(), min_confidence=0.0)
    assert never.stats.to_dict()["accept_lengths"] == full.stats.accept_lengths and never.stats.confidence_stops == 0


def test_drafts_run_under_the_draft_plan_and_verification_dense():
    ex = SkipExecutor(tiny_model("llama"))
    skip = SkipSet.of(attn=[1], ffn=[2, 3])
    spec, _ = check_against_dense(ex, PROMPT, StagePlan.static(skip), 24, 4, set())
    s, arch = spec.stats, ex.arch
    per_token = [a + f for a, f in zip(arch.attn_flops, arch.ffn_flops)]
    skipped = arch.attn_flops[1] + arch.ffn_flops[2] + arch.ffn_flops[3]
    assert s.draft_cost.total == pytest.approx(s.drafted * sum(per_token))
    assert s.draft_cost.fraction == pytest.approx(1 - skipped / sum(per_token))
    # dense: the prompt once, then each verify block (the pending token and its drafts)
    assert s.verify_cost.fraction == 1.0
    assert s.verify_cost.total == pytest.approx((len(PROMPT) + s.verify_steps + s.drafted) * sum(per_token))
    assert s.acceptance_rate < 1.0


def test_bad_arguments_are_refused():
    ex = SkipExecutor(tiny_model("llama"))
    with pytest.raises(ValueError):
        generate_speculative(ex, PROMPT, StagePlan(), 8, k=0)
    with pytest.raises(ValueError):
        generate_speculative(ex, PROMPT, StagePlan(), 0)
    with pytest.raises(ValueError):
        generate_speculative(ex, PROMPT, StagePlan(dynamic_ffn=DynamicFFN(frozenset({1}), 0.5)), 8)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ARCHS)
def test_speculative_on_cuda_equals_dense(arch):
    """On CUDA (float32, TF32 off) a block verify forward and single-token dense steps must still
    choose the same tokens; the timers synchronise the device."""
    import copy
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        cpu = tiny_model(arch)
        ex = SkipExecutor(copy.deepcopy(cpu).cuda())
        drafts = (StagePlan.static(SkipSet.of(attn=[1], ffn=[2])), StagePlan.static(SkipSet.of(ffn=[2])))
        for draft, k in zip(drafts, (4, 6)):
            spec, dense = check_against_dense(ex, PROMPT, draft, 24, k, set())
            assert spec.tokens == SkipExecutor(cpu).generate([PROMPT], StagePlan(), 24).tokens
            assert spec.stats.verify_seconds > 0.0
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
