"""The skip executor against plain transformers, deleted layers, no-cache references and itself.

Pipelines are compared on the logits of every step (float32, within LOGIT_ATOL), not only on the
greedy tokens: a padding or cache leak that does not flip an argmax still fails.
"""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from tiny_models import (ARCHS, LAYERS, PROMPT, StepLogits, all_logits, assert_close, skip_sets, stage_plans,
                         tiny_model, without_layer)

from litestage_bench.engine.executor import CostMeter, SkipExecutor
from litestage_bench.engine.plan import DynamicFFN, SkipPlan, SkipSet, StagePlan


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return request.param, tiny_model(request.param)


def generate_logged(ex: SkipExecutor, inputs: list[list[int]], plan: StagePlan, max_new_tokens: int, **kwargs):
    """`generate` plus the logits of every step of every row: (generation, [row logits])."""
    log = StepLogits()
    gen = ex.generate(inputs, plan, max_new_tokens, on_token=log, **kwargs)
    return gen, [log.row(r, len(gen.tokens[r])) for r in range(len(inputs))]


def no_cache_step_logits(ex: SkipExecutor, prompt: list[int], generated: list[int], plan: StagePlan) -> torch.Tensor:
    """The logits that chose each generated token, from one no-cache forward over the whole
    sequence (exact for static plans, where prefill and decode skip the same sub-layers)."""
    return all_logits(ex, prompt + generated, plan)[len(prompt) - 1:len(prompt) - 1 + len(generated)]


def test_empty_plan_matches_hf_logits(arch_model):
    arch, model = arch_model
    with torch.inference_mode():
        ref = tiny_model(arch)(torch.tensor([PROMPT])).logits[0]
    assert_close(all_logits(SkipExecutor(model), PROMPT), ref)


def test_empty_plan_greedy_equals_generate(arch_model):
    arch, model = arch_model
    ex = SkipExecutor(model)
    got, (logits,) = generate_logged(ex, [PROMPT], StagePlan(), 16)
    # the reference is a fresh copy (same seed): the executor switches its model's attention function,
    # and transformers' own (gemma2: eager, soft-capped) is the one to match
    with torch.inference_mode():
        ref = tiny_model(arch).generate(torch.tensor([PROMPT]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                             eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    assert got.tokens[0] == ref.sequences[0, len(PROMPT):].tolist()
    assert_close(logits, torch.cat(ref.logits))


@pytest.mark.parametrize("drop", [0, 2])
def test_skipping_a_whole_layer_equals_deleting_it(arch_model, drop):
    arch, model = arch_model
    ex = SkipExecutor(model)
    plan = StagePlan.static(SkipSet.layers([drop]))
    gen, (steps,) = generate_logged(ex, [PROMPT], plan, 10)
    seq = PROMPT + gen.tokens[0]
    pruned = without_layer(model, drop)
    with torch.inference_mode():
        ref = pruned(torch.tensor([seq]), use_cache=False).logits[0]
    assert_close(all_logits(ex, seq, plan), ref)
    # the cached decode steps are the pruned model's own (greedy) steps
    assert_close(steps, ref[len(PROMPT) - 1:-1])
    assert ref[len(PROMPT) - 1:-1].argmax(-1).tolist() == gen.tokens[0]


def test_batched_equals_unbatched(arch_model):
    _, model = arch_model
    ex = SkipExecutor(model)
    prompts = [PROMPT, PROMPT[:5], PROMPT[3:] + [1, 2, 3, 4, 5]]
    for plan in (StagePlan(), StagePlan.static(SkipSet.of(attn=[1], ffn=[2, 3]))):
        batched, batched_logits = generate_logged(ex, prompts, plan, 12)
        for i, p in enumerate(prompts):
            alone, (alone_logits,) = generate_logged(ex, [p], plan, 12)
            assert alone.tokens[0] == batched.tokens[i]
            assert_close(batched_logits[i], alone_logits)
            assert_close(batched_logits[i], no_cache_step_logits(ex, p, batched.tokens[i], plan))


def test_shared_prefix_equals_separate_prompts(arch_model):
    _, model = arch_model
    ex = SkipExecutor(model)
    suffixes = [[70], [71, 72], [73]]
    plan = StagePlan.static(SkipSet.of(ffn=[1]))
    shared, shared_logits = generate_logged(ex, suffixes, plan, 10, prefix=PROMPT)
    for i, s in enumerate(suffixes):
        alone, (alone_logits,) = generate_logged(ex, [PROMPT + s], plan, 10)
        assert alone.tokens[0] == shared.tokens[i]
        assert_close(shared_logits[i], alone_logits)
        assert_close(shared_logits[i], no_cache_step_logits(ex, PROMPT + s, shared.tokens[i], plan))


def test_stop_tokens_end_rows_independently(arch_model):
    _, model = arch_model
    ex = SkipExecutor(model)
    prompts = [PROMPT, PROMPT[:6]]
    free, free_logits = generate_logged(ex, prompts, StagePlan(), 12)
    stop = {free.tokens[0][3]}
    got, got_logits = generate_logged(ex, prompts, StagePlan(), 12, stop_ids=stop)
    assert got.stopped[0] == "stop"
    for row in (0, 1):
        cut = next((i for i, t in enumerate(free.tokens[row]) if t in stop), None)
        expected = free.tokens[row] if cut is None else free.tokens[row][:cut + 1]
        assert got.tokens[row] == expected
        # the row still running after the other one stopped sees no trace of it
        assert_close(got_logits[row], free_logits[row][:len(expected)])


def per_position_logits(ex: SkipExecutor, seq: list[int], sets: list[SkipSet]) -> torch.Tensor:
    """[len(seq), vocab] logits of one no-cache forward where position p skips the sub-layers of
    sets[p] by dropping only their output there: every position's keys/values are computed (the
    executor's 'fill' semantics)."""
    arch = ex.arch
    with torch.inference_mode():
        ids = torch.tensor([seq])
        hidden = arch.embed(ids)
        ropes = arch.rope(hidden, torch.arange(len(seq))[None])
        causal = torch.ones(len(seq), len(seq), dtype=torch.bool).tril()[None, None]
        for i in range(arch.num_layers):
            mask = causal
            if arch.is_sliding(i):
                idx = torch.arange(len(seq))
                mask = causal & ((idx[:, None] - idx[None, :]) < arch.sliding_window)[None, None]
            keep_attn = torch.tensor([i not in s.attn for s in sets], dtype=hidden.dtype)[None, :, None]
            hidden = hidden + keep_attn * arch.attn_delta(i, hidden, ropes[i], mask, None)
            keep_ffn = torch.tensor([i not in s.ffn for s in sets], dtype=hidden.dtype)[None, :, None]
            hidden = hidden + keep_ffn * arch.ffn_delta(i, hidden)
        return arch.logits(hidden[0]).float()


def step_sets(plan: StagePlan, prompt_len: int, generated: int) -> list[SkipSet]:
    """Prompt tokens use the prefill set, generated token k the set of decode step k."""
    return [plan.skip_at(-1)] * prompt_len + [plan.skip_at(k) for k in range(generated)]


def reference_per_position(model, ex: SkipExecutor, prompt: list[int], plan: StagePlan,
                           steps: int) -> tuple[list[int], torch.Tensor]:
    """No-cache greedy decoding under per-position skip sets (``per_position_logits``).
    Returns the tokens and the [steps, vocab] logits that chose them."""
    seq = list(prompt)
    out, logits = [], []
    for _ in range(steps):
        step_logits = per_position_logits(ex, seq, step_sets(plan, len(prompt), len(seq) - len(prompt)))[-1]
        token = int(step_logits.argmax(-1))
        logits.append(step_logits)
        out.append(token)
        seq.append(token)
    return out, torch.stack(logits)


SCHEDULES = {
    # SkipDecode-like: lower layers skipped from step 2, more from step 5 (attention never re-activated)
    "rising": StagePlan(schedule=((2, SkipSet.layers([1])), (5, SkipSet.layers([1, 2])))),
    # attention of layer 1 skipped in prefill and early decode, active again from step 3
    "reactivating": StagePlan(prefill=SkipSet.of(attn=[1]), decode=SkipSet.of(attn=[1]),
                              schedule=((3, SkipSet.of(ffn=[0])), (6, SkipSet.of(attn=[2])))),
    # skipped only at the end of the generation, dense decode set (scoring used to read its gaps)
    "late_skip": StagePlan(schedule=((4, SkipSet.of(attn=[0, 2], ffn=[3])),)),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_scoring_after_a_schedule_equals_a_no_cache_reference(arch_model, name):
    """Tokens appended after a generation (answer scoring) run under the plan's scoring set and
    read only keys/values that were written."""
    _, model = arch_model
    ex = SkipExecutor(model)
    plan = SCHEDULES[name]
    gen = ex.generate([PROMPT], plan, 8, keep_finished=True)
    fed = gen.fed_tokens(0)
    extra = gen.unfed_tokens(0) + [7, 19, 42]
    got = ex.extend(gen.cache, [extra], plan, CostMeter())[0]
    seq = PROMPT + fed + extra
    sets = step_sets(plan, len(PROMPT), len(fed)) + [plan.scoring_set()] * len(extra)
    ref = per_position_logits(ex, seq, sets)[-len(extra):]
    assert_close(got, ref)


def test_reactivated_attention_fills_kv_like_a_no_cache_run(arch_model):
    _, model = arch_model
    ex = SkipExecutor(model)
    # attention of layer 1 skipped in prefill and the first decode steps, active again from step 3;
    # layer 2's attention only skipped later (never re-activated: a plain gap)
    plan = StagePlan(prefill=SkipSet.of(attn=[1]), decode=SkipSet.of(attn=[1]),
                     schedule=((3, SkipSet.of(ffn=[0])), (6, SkipSet.of(attn=[2]))))
    assert ex.fill_layers(plan, 10) == frozenset({1})
    got, (logits,) = generate_logged(ex, [PROMPT], plan, 10)
    ref_tokens, ref_logits = reference_per_position(model, ex, PROMPT, plan, 10)
    assert got.tokens[0] == ref_tokens
    assert_close(logits, ref_logits)


def test_monotone_schedule_matches_no_cache_reference(arch_model):
    _, model = arch_model
    ex = SkipExecutor(model)
    plan = StagePlan(schedule=((2, SkipSet.layers([1])), (5, SkipSet.layers([1, 2]))))  # SkipDecode-like
    assert ex.fill_layers(plan, 10) == frozenset()
    got, (logits,) = generate_logged(ex, [PROMPT], plan, 10)
    ref_tokens, ref_logits = reference_per_position(model, ex, PROMPT, plan, 10)
    assert got.tokens[0] == ref_tokens
    assert_close(logits, ref_logits)


def test_dynamic_ffn_with_threshold_below_every_similarity_equals_a_schedule(arch_model):
    _, model = arch_model
    ex = SkipExecutor(model)
    dyn = StagePlan(dynamic_ffn=DynamicFFN(frozenset({1, 2}), threshold=-2.0, warmup_steps=3))
    sched = StagePlan(schedule=((3, SkipSet.of(ffn=[1, 2])),))
    got, (got_logits,) = generate_logged(ex, [PROMPT], dyn, 10)
    ref, (ref_logits,) = generate_logged(ex, [PROMPT], sched, 10)
    assert got.tokens == ref.tokens
    assert_close(got_logits, ref_logits)
    never = StagePlan(dynamic_ffn=DynamicFFN(frozenset({1, 2}), threshold=2.0, warmup_steps=3))
    got, (got_logits,) = generate_logged(ex, [PROMPT], never, 10)
    ref, (ref_logits,) = generate_logged(ex, [PROMPT], StagePlan(), 10)
    assert got.tokens == ref.tokens
    assert_close(got_logits, ref_logits)


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
        seen.append(logits[0].clone())
        return torch.full_like(tokens, step >= 3, dtype=torch.bool)

    got = ex.generate([PROMPT], StagePlan(), 12, on_token=stop_at_step_three)
    free, (free_logits,) = generate_logged(ex, [PROMPT], StagePlan(), 12)
    assert got.stopped == ["callback"] and got.tokens[0] == free.tokens[0][:3]
    assert seen[0].shape == (model.config.vocab_size,) and len(seen) == 4
    assert_close(torch.stack(seen), free_logits[:4])


def test_cost_fraction_of_all_ffns_skipped():
    model = tiny_model("llama")
    ex = SkipExecutor(model)
    n = ex.num_layers
    got = ex.generate([PROMPT], StagePlan.static(SkipSet.of(ffn=range(n))), 5)
    attn, ffn = sum(ex.arch.attn_flops), sum(ex.arch.ffn_flops)
    assert got.cost.fraction == pytest.approx(attn / (attn + ffn))
    assert ex.generate([PROMPT], StagePlan(), 5).cost.fraction == 1.0


# --- property tests over random plans -------------------------------------------------------------

_MODEL = {}


def _executor() -> SkipExecutor:
    if "ex" not in _MODEL:
        _MODEL["ex"] = SkipExecutor(tiny_model("llama", layers=LAYERS))
    return _MODEL["ex"]


@settings(max_examples=25, deadline=None)
@given(plan=stage_plans(max_from_step=6))
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


def test_fused_projection_costs_match_their_weights():
    """phi3's fused qkv / gate-up projections cost what their weights say: skipping every FFN (or
    every attention) leaves the other's share, and a skipped layer's keys/values cost their rows."""
    model = tiny_model("phi3")
    ex = SkipExecutor(model)
    layer = model.model.layers[0]
    attn = layer.self_attn.qkv_proj.weight.numel() + layer.self_attn.o_proj.weight.numel()
    ffn = layer.mlp.gate_up_proj.weight.numel() + layer.mlp.down_proj.weight.numel()
    n = ex.num_layers
    no_ffn = ex.generate([PROMPT], StagePlan.static(SkipSet.of(ffn=range(n))), 5)
    assert no_ffn.cost.fraction == pytest.approx(attn / (attn + ffn))
    no_attn = ex.generate([PROMPT], StagePlan.static(SkipSet.of(attn=range(n))), 5)
    assert no_attn.cost.fraction == pytest.approx(ffn / (attn + ffn))
    config = model.config
    kv_rows = 2 * config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    assert ex.arch.kv_flops == [2 * kv_rows * config.hidden_size] * n
    # the same dimensions unfused (llama: separate q/k/v and gate/up projections) cost the same
    llama = SkipExecutor(tiny_model("llama")).arch
    assert (ex.arch.attn_flops, ex.arch.ffn_flops, ex.arch.kv_flops) == (llama.attn_flops, llama.ffn_flops,
                                                                          llama.kv_flops)


def test_unsupported_model_type_is_refused_before_weights_load(tmp_path, monkeypatch):
    import transformers

    from litestage_bench.core.errors import UserError
    from litestage_bench.engine.models import load_model

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 32}))

    def no_load(*args, **kwargs):
        raise AssertionError("weights or tokenizer loaded before the model type was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_load)
    with pytest.raises(UserError) as err:
        load_model(str(tmp_path))
    assert "'mamba' is not supported" in err.value.problem
    assert all(family in err.value.fix for family in ("llama", "qwen3", "phi3", "gemma2", "olmo2", "granite"))


@pytest.mark.parametrize("keep_finished", [False, True])
def test_a_row_that_stops_early_leaves_the_batch_within_max_wait_steps(arch_model, keep_finished):
    """Row 0 of 6 stops at step 1, the others run 16 steps: it costs at most MAX_WAIT_STEPS more
    row-steps after it stopped (computed - generated), not the 14 that waiting for the longest row would. With
    keep_finished the returned cache still holds every row, in order: continuing it gives each
    row the logits it gives alone."""
    from litestage_bench.engine.executor import MAX_WAIT_STEPS
    _, model = arch_model
    ex = SkipExecutor(model)
    prompts = [PROMPT, PROMPT[:6], PROMPT[2:], PROMPT[:9], PROMPT[4:], PROMPT[1:8]]

    def stop_row_zero(step, logits, tokens, rows):
        return (rows == 0) & (step >= 1)

    got = ex.generate(prompts, StagePlan(), 16, on_token=stop_row_zero, keep_finished=keep_finished)
    generated = sum(len(t) for t in got.tokens)
    assert got.stopped[0] == "callback" and len(got.tokens[1]) == 16
    # row 0's waste: the token its early exit discarded, then at most MAX_WAIT_STEPS padded steps
    assert 0 < got.computed_tokens - generated <= 1 + MAX_WAIT_STEPS
    if not keep_finished:
        return
    assert got.cache.batch == len(prompts)
    after = ex.extend(got.cache, [[70, 71]] * len(prompts), StagePlan(), CostMeter(), logits="last")[:, -1]
    for i, p in enumerate(prompts):
        alone = ex.generate([p], StagePlan(), 16, on_token=lambda s, lg, t, r, i=i: stop_row_zero(s, lg, t, r + i),
                            keep_finished=True)
        assert alone.tokens[0] == got.tokens[i]
        ref = ex.extend(alone.cache, [[70, 71]], StagePlan(), CostMeter(), logits="last")[:, -1]
        assert_close(after[i:i + 1], ref)
