"""The skip executor against plain transformers, deleted layers, no-cache references and itself."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from litestage_bench.executor import CostMeter, SkipExecutor
from litestage_bench.plan import DynamicFFN, SkipPlan, SkipSet, StagePlan
from tiny_models import ARCHS, tiny_model

LOGIT_ATOL = 1e-4  # float32; observed differences are ~1e-6 on the tiny models
PROMPT = [5, 17, 33, 2, 81, 40, 9, 64, 12, 7, 55, 3]


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return request.param, tiny_model(request.param)


def all_logits(executor: SkipExecutor, ids: list[int], plan: StagePlan = StagePlan()) -> torch.Tensor:
    cache = executor.new_cache(1)
    x = torch.tensor([ids])
    return executor.forward(cache, x, torch.ones_like(x, dtype=torch.bool), plan.prefill, plan, CostMeter(),
                            logits="all")[0]


def test_empty_plan_matches_hf_logits(arch_model):
    _, model = arch_model
    with torch.inference_mode():
        ref = model(torch.tensor([PROMPT])).logits[0]
    got = all_logits(SkipExecutor(model), PROMPT)
    assert torch.allclose(ref, got, atol=LOGIT_ATOL), (ref - got).abs().max()


def test_empty_plan_greedy_equals_generate(arch_model):
    _, model = arch_model
    ex = SkipExecutor(model)
    got = ex.generate([PROMPT], StagePlan(), max_new_tokens=16)
    with torch.inference_mode():
        ref = model.generate(torch.tensor([PROMPT]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    assert got.tokens[0] == ref[0, len(PROMPT):].tolist()


def without_layer(model: torch.nn.Module, drop: int) -> torch.nn.Module:
    """A copy with one decoder layer deleted (indices and config renumbered, as pruning code does)."""
    pruned = copy.deepcopy(model)
    kept = [layer for i, layer in enumerate(pruned.model.layers) if i != drop]
    pruned.model.layers = torch.nn.ModuleList(kept)
    for i, layer in enumerate(kept):
        layer.self_attn.layer_idx = i
    pruned.config.num_hidden_layers = len(kept)
    if getattr(pruned.config, "layer_types", None):
        pruned.config.layer_types = [t for i, t in enumerate(pruned.config.layer_types) if i != drop]
    return pruned


@pytest.mark.parametrize("drop", [0, 2])
def test_skipping_a_whole_layer_equals_deleting_it(arch_model, drop):
    arch, model = arch_model
    ex = SkipExecutor(model)
    plan = StagePlan.static(SkipSet.layers([drop]))
    gen = ex.generate([PROMPT], plan, max_new_tokens=10)
    seq = PROMPT + gen.tokens[0]
    pruned = without_layer(model, drop)
    with torch.inference_mode():
        ref = pruned(torch.tensor([seq]), use_cache=False).logits[0]
    got = all_logits(ex, seq, plan)
    assert torch.allclose(ref, got, atol=LOGIT_ATOL)
    # and the greedy continuation is the pruned model's own greedy continuation
    assert ref[len(PROMPT) - 1:-1].argmax(-1).tolist() == gen.tokens[0]


def test_batched_equals_unbatched(arch_model):
    _, model = arch_model
    ex = SkipExecutor(model)
    prompts = [PROMPT, PROMPT[:5], PROMPT[3:] + [1, 2, 3, 4, 5]]
    for plan in (StagePlan(), StagePlan.static(SkipSet.of(attn=[1], ffn=[2, 3]))):
        batched = ex.generate(prompts, plan, max_new_tokens=12)
        for i, p in enumerate(prompts):
            assert ex.generate([p], plan, max_new_tokens=12).tokens[0] == batched.tokens[i]


def test_shared_prefix_equals_separate_prompts(arch_model):
    _, model = arch_model
    ex = SkipExecutor(model)
    suffixes = [[70], [71, 72], [73]]
    plan = StagePlan.static(SkipSet.of(ffn=[1]))
    shared = ex.generate(suffixes, plan, max_new_tokens=10, prefix=PROMPT)
    for i, s in enumerate(suffixes):
        assert ex.generate([PROMPT + s], plan, max_new_tokens=10).tokens[0] == shared.tokens[i]


def test_stop_tokens_end_rows_independently(arch_model):
    _, model = arch_model
    ex = SkipExecutor(model)
    free = ex.generate([PROMPT, PROMPT[:6]], StagePlan(), max_new_tokens=12)
    stop = {free.tokens[0][3]}
    got = ex.generate([PROMPT, PROMPT[:6]], StagePlan(), max_new_tokens=12, stop_ids=stop)
    assert got.stopped[0] == "stop"
    for row in (0, 1):
        cut = next((i for i, t in enumerate(free.tokens[row]) if t in stop), None)
        expected = free.tokens[row] if cut is None else free.tokens[row][:cut + 1]
        assert got.tokens[row] == expected


def reference_per_position(model, ex: SkipExecutor, prompt: list[int], plan: StagePlan, steps: int) -> list[int]:
    """No-cache greedy decoding where a skipped sub-layer only drops its output at that position:
    every position's keys/values are always computed (the executor's 'fill' semantics)."""
    arch = ex.arch
    seq = list(prompt)
    out = []
    with torch.inference_mode():
        for step in range(steps):
            ids = torch.tensor([seq])
            hidden = arch.embed(ids)
            positions = torch.arange(len(seq))[None]
            ropes = arch.rope(hidden, positions)
            causal = torch.ones(len(seq), len(seq), dtype=torch.bool).tril()[None, None]
            # skip set of each position: prompt tokens use prefill's, generated token k uses decode step k
            sets = [plan.skip_at(-1)] * len(prompt) + [plan.skip_at(k) for k in range(len(seq) - len(prompt))]
            for i in range(arch.num_layers):
                mask = causal
                if arch.is_sliding(i):
                    idx = torch.arange(len(seq))
                    mask = causal & ((idx[:, None] - idx[None, :]) < arch.sliding_window)[None, None]
                keep_attn = torch.tensor([i not in s.attn for s in sets], dtype=hidden.dtype)[None, :, None]
                hidden = hidden + keep_attn * arch.attn_delta(i, hidden, ropes[i], mask, None)
                keep_ffn = torch.tensor([i not in s.ffn for s in sets], dtype=hidden.dtype)[None, :, None]
                hidden = hidden + keep_ffn * arch.ffn_delta(i, hidden)
            token = int(arch.lm_head(arch.norm(hidden[:, -1])).argmax(-1))
            out.append(token)
            seq.append(token)
    return out


def test_reactivated_attention_fills_kv_like_a_no_cache_run(arch_model):
    _, model = arch_model
    ex = SkipExecutor(model)
    # attention of layer 1 skipped in prefill and the first decode steps, active again from step 3;
    # layer 2's attention only skipped later (never re-activated: a plain gap)
    plan = StagePlan(prefill=SkipSet.of(attn=[1]), decode=SkipSet.of(attn=[1]),
                     schedule=((3, SkipSet.of(ffn=[0])), (6, SkipSet.of(attn=[2]))))
    assert ex._fill_layers(plan, 10) == frozenset({1})
    got = ex.generate([PROMPT], plan, max_new_tokens=10)
    assert got.tokens[0] == reference_per_position(model, ex, PROMPT, plan, 10)


def test_monotone_schedule_matches_no_cache_reference(arch_model):
    _, model = arch_model
    ex = SkipExecutor(model)
    plan = StagePlan(schedule=((2, SkipSet.layers([1])), (5, SkipSet.layers([1, 2]))))  # SkipDecode-like
    assert ex._fill_layers(plan, 10) == frozenset()
    got = ex.generate([PROMPT], plan, max_new_tokens=10)
    assert got.tokens[0] == reference_per_position(model, ex, PROMPT, plan, 10)


def test_dynamic_ffn_with_threshold_below_every_similarity_equals_a_schedule(arch_model):
    _, model = arch_model
    ex = SkipExecutor(model)
    dyn = StagePlan(dynamic_ffn=DynamicFFN(frozenset({1, 2}), threshold=-2.0, warmup_steps=3))
    sched = StagePlan(schedule=((3, SkipSet.of(ffn=[1, 2])),))
    assert ex.generate([PROMPT], dyn, 10).tokens == ex.generate([PROMPT], sched, 10).tokens
    never = StagePlan(dynamic_ffn=DynamicFFN(frozenset({1, 2}), threshold=2.0, warmup_steps=3))
    assert ex.generate([PROMPT], never, 10).tokens == ex.generate([PROMPT], StagePlan(), 10).tokens


def test_scaled_replacement_differs_from_identity(arch_model):
    _, model = arch_model
    ex = SkipExecutor(model)
    identity = StagePlan.static(SkipSet.of(attn=[1]))
    scaled = StagePlan(prefill=SkipSet.of(attn=[1]), decode=SkipSet.of(attn=[1]), attn_scale={1: 0.5})
    assert not torch.allclose(all_logits(ex, PROMPT, identity), all_logits(ex, PROMPT, scaled))


def test_token_callback_ends_a_sequence_early(arch_model):
    _, model = arch_model
    ex = SkipExecutor(model)
    seen = []

    def stop_at_step_three(step, logits, tokens, rows):
        seen.append(logits.shape)
        return torch.full_like(tokens, step >= 3, dtype=torch.bool)

    got = ex.generate([PROMPT], StagePlan(), 12, on_token=stop_at_step_three)
    free = ex.generate([PROMPT], StagePlan(), 12)
    assert got.stopped == ["callback"] and got.tokens[0] == free.tokens[0][:3]
    assert seen[0] == (1, model.config.vocab_size)


def test_cost_fraction_of_all_ffns_skipped():
    model = tiny_model("llama")
    ex = SkipExecutor(model)
    n = ex.num_layers
    got = ex.generate([PROMPT], StagePlan.static(SkipSet.of(ffn=range(n))), 5)
    attn, ffn = sum(ex.arch.attn_flops), sum(ex.arch.ffn_flops)
    assert got.cost.fraction == pytest.approx(attn / (attn + ffn))
    assert ex.generate([PROMPT], StagePlan(), 5).cost.fraction == 1.0


# --- property tests over random plans -------------------------------------------------------------

LAYERS = 4
layer_sets = st.frozensets(st.integers(0, LAYERS - 1))
skip_sets = st.builds(SkipSet, attn=layer_sets, ffn=layer_sets)
stage_plans = st.builds(
    StagePlan,
    prefill=skip_sets,
    decode=skip_sets,
    schedule=st.lists(st.tuples(st.integers(0, 6), skip_sets), max_size=2).map(lambda xs: tuple(sorted(xs, key=lambda x: x[0]))),
    attn_scale=st.dictionaries(st.integers(0, LAYERS - 1), st.floats(0.5, 1.5), max_size=2),
    ffn_scale=st.dictionaries(st.integers(0, LAYERS - 1), st.floats(0.5, 1.5), max_size=2),
)
_MODEL = {}


def _executor() -> SkipExecutor:
    if "ex" not in _MODEL:
        _MODEL["ex"] = SkipExecutor(tiny_model("llama", layers=LAYERS))
    return _MODEL["ex"]


@settings(max_examples=25, deadline=None)
@given(plan=stage_plans)
def test_random_plans_run_cleanly_and_round_trip(plan):
    ex = _executor()
    got = ex.generate([PROMPT, PROMPT[:4]], plan, max_new_tokens=6)
    assert all(len(t) == 6 for t in got.tokens)
    assert torch.isfinite(got.last_logits).all()
    assert 0.0 <= got.cost.fraction <= 1.0
    whole = SkipPlan({"recall": plan, "summarize": plan}, name="random")
    assert SkipPlan.from_dict(json.loads(json.dumps(whole.to_dict()))) == whole


@settings(max_examples=25, deadline=None)
@given(small=skip_sets, extra=skip_sets)
def test_executed_cost_is_monotone_in_the_skip_set(small, extra):
    ex = _executor()
    big = small.union(extra)
    cost_small = ex.generate([PROMPT], StagePlan.static(small), 4).cost.fraction
    cost_big = ex.generate([PROMPT], StagePlan.static(big), 4).cost.fraction
    assert cost_big <= cost_small + 1e-12
