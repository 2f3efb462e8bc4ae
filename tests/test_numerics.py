"""The bf16-matmul numerics against float32, and against itself across batching and threads.

The claims tested (numerics.py): each bf16 linear output is the bf16 rounding of the exact product
of bf16-rounded inputs (so it cannot depend on batch shape or threads); the screened LM head picks
the float32 head's greedy token; the model stays within a stated distance of float32; and the
grouped-query attention path gives the same bits as transformers' copying one.
"""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import ARCHS, PROMPT, all_logits, tiny_model

from litestage_bench.core.errors import UserError
from litestage_bench.engine.arch import ATTENTION_NAME
from litestage_bench.engine.executor import CostMeter, SkipExecutor
from litestage_bench.engine.numerics import (Bf16MatmulLinear, ScreenedBf16Head, apply_numerics, resolve_numerics,
                                             storage_dtype)
from litestage_bench.engine.plan import SkipSet, StagePlan
from litestage_bench.records.results import build_record

# bf16 rounds to 8 significant bits (2^-8 relative). Through a 4-layer tiny model the logits of the
# bf16-matmul path stay within 3% of the float32 logits' range; observed ~0.5%.
LOGIT_REL_TOL = 0.03


def bf16_model(arch: str) -> torch.nn.Module:
    model = copy.deepcopy(tiny_model(arch))
    apply_numerics(model, "bf16-matmul")
    return model


def test_linear_output_is_the_rounded_exact_product():
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96, bias=True)
    layer = Bf16MatmulLinear(linear)
    x = torch.randn(5, 256)
    exact = x.bfloat16().double() @ layer.weight.double().t()
    rounded = exact.float().bfloat16().float() + layer.bias
    got = layer(x)
    assert got.dtype == torch.float32
    # double rounding (exact -> fp32 -> bf16) may differ from one rounding in the last bit, rarely
    assert (got == rounded).float().mean() >= 0.99
    assert torch.allclose(got, rounded, rtol=2 ** -7, atol=0)


def test_one_row_equals_that_row_in_a_batch():
    """Batch 1 takes the matrix-vector kernel, a batch the GEMM: the same bits per row."""
    torch.manual_seed(1)
    layer = Bf16MatmulLinear(torch.nn.Linear(576, 1536, bias=False))
    x = torch.randn(8, 576)
    batch = layer(x)
    for r in range(8):
        assert torch.equal(layer(x[r:r + 1]), batch[r:r + 1])
        assert torch.equal(layer(x[r:r + 1, None])[:, 0], batch[r:r + 1])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 6), tie=st.booleans())
def test_screened_head_picks_the_float32_greedy_token(seed, rows, tie):
    gen = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(64, 500, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(500, 64, generator=gen))
        if tie:  # two rows nearly equal: their logits differ far below bf16 resolution
            linear.weight[7] = linear.weight[3] * (1 + 1e-5)
    head = ScreenedBf16Head(linear)
    h = torch.randn(rows, 64, generator=gen) * 3
    if tie:
        h[0] = linear.weight[3].detach() * 2
    ref = linear(h)
    got = head(h)
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    top = ref.argmax(-1)
    assert torch.allclose(got.gather(1, top[:, None]), ref.gather(1, top[:, None]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_matmul_logits_stay_near_float32(arch):
    ref = all_logits(SkipExecutor(tiny_model(arch)), PROMPT)
    got = all_logits(SkipExecutor(bf16_model(arch)), PROMPT)
    spread = float(ref.max() - ref.min())
    assert float((got - ref).abs().max()) <= LOGIT_REL_TOL * spread
    assert not torch.equal(got, ref)  # the path is really taken


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_matmul_is_deterministic_across_batching_and_threads(arch):
    """A prompt alone, beside other rows (left-padded) and at another thread count: the same tokens
    and the same logits, bit for bit, on a tiny model. The linear layers are batch- and
    thread-invariant; on the real models batching and re-prefill still move answers, because the
    float32 attention sums in another order when padding or the cache layout changes and bf16
    rounding magnifies that (results/numerics/noise_floor.md measures it: threads 0 flips)."""
    ex = SkipExecutor(bf16_model(arch))
    other = [3, 8, 1, 90, 44]
    alone = ex.generate([PROMPT], StagePlan(), 12)
    batched = ex.generate([other, PROMPT, PROMPT[:7]], StagePlan(), 12)
    assert alone.tokens[0] == batched.tokens[1]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        again = all_logits(ex, PROMPT)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(again, all_logits(ex, PROMPT))


@pytest.mark.parametrize("arch", ARCHS)
def test_skipping_stays_exact_under_bf16_matmul(arch):
    """The executor's skip semantics do not depend on the numerics: skipping all of layer 1's
    sub-layers equals a plan that skips its attention and FFN apart."""
    ex = SkipExecutor(bf16_model(arch))
    whole = all_logits(ex, PROMPT, StagePlan.static(SkipSet.layers([1])))
    parts = all_logits(ex, PROMPT, StagePlan.static(SkipSet.of(attn=[1], ffn=[1])))
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, all_logits(ex, PROMPT))


# gemma2's soft-capped attention has no sdpa path (ours is eager, checked against transformers' eager
# attention by the executor tests)
@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "gemma2"])
def test_grouped_attention_gives_the_same_bits_as_transformers_sdpa(arch):
    model = tiny_model(arch)
    ex = SkipExecutor(model)
    assert ex.arch.config._attn_implementation == ATTENTION_NAME
    ours = ex.generate([PROMPT, PROMPT[:5]], StagePlan(), 8)
    ours_logits = all_logits(ex, PROMPT)
    ex.arch.config._attn_implementation = "sdpa"
    try:
        plain = ex.generate([PROMPT, PROMPT[:5]], StagePlan(), 8)
        assert torch.equal(all_logits(ex, PROMPT), ours_logits)
    finally:
        ex.arch.config._attn_implementation = ATTENTION_NAME
    assert plain.tokens == ours.tokens
    assert torch.equal(plain.last_logits, ours.last_logits)


def test_numerics_names_and_pairs_are_checked():
    assert resolve_numerics(None, "float32") == "float32"
    assert resolve_numerics("bf16-matmul", "float32") == "bf16-matmul"
    assert storage_dtype("bf16-matmul") == "float32"
    with pytest.raises(UserError, match="needs --dtype float32"):
        resolve_numerics("bf16-matmul", "bfloat16")
    with pytest.raises(UserError, match="unknown numerics"):
        resolve_numerics("int3", "float32")


def test_a_record_always_carries_its_numerics():
    common = dict(model="m", benchmark="obqa", split="eval", method="dense", policy=None, answer_rule="letter",
                  items=[], command="", config={})
    assert build_record(**common, dtype="float32").numerics == "float32"
    assert build_record(**common, dtype="float32", numerics="bf16-matmul").numerics == "bf16-matmul"


@pytest.mark.parametrize("numerics", ["float32", "bf16-matmul"])
@pytest.mark.parametrize("arch", ARCHS)
def test_filled_keys_values_equal_the_attention_modules_own(arch, numerics):
    """What a skipped attention layer writes for later readers (``kv_only``: fused projections, q/k
    norms, partial rotary) is what its attention module writes when it runs, under either numerics."""
    ex = SkipExecutor(bf16_model(arch) if numerics == "bf16-matmul" else tiny_model(arch))
    seen = {}

    def probe(layer, kind, before, after, valid):
        if kind == "attn":
            seen[layer] = before

    cache = ex.new_cache(1)
    ex.prefill(cache, [PROMPT], StagePlan(), 1, CostMeter(), probe=probe)
    positions = torch.arange(len(PROMPT))[None]
    for layer in (0, 2):
        with torch.inference_mode():
            key, value = ex.arch.kv_only(layer, seen[layer], ex.arch.rope(seen[layer], positions)[layer])
        assert torch.allclose(key, cache.keys[layer][:, :, :len(PROMPT)], atol=1e-5, rtol=0)
        assert torch.allclose(value, cache.values[layer][:, :, :len(PROMPT)], atol=1e-5, rtol=0)
