"""Tiny randomly initialised models of each supported architecture (seconds to build and run),
and helpers shared by the executor and scoring tests."""
from __future__ import annotations

import copy

import torch
from hypothesis import strategies as st

from litestage_bench.engine.executor import CostMeter, SkipExecutor
from litestage_bench.engine.plan import SkipSet, StagePlan

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3", "olmo2", "granite")
LOGIT_ATOL = 1e-4  # float32; observed differences are ~1e-6 on the tiny models
PROMPT = [5, 17, 33, 2, 81, 40, 9, 64, 12, 7, 55, 3]
LAYERS = 4  # tiny_model's default depth

# random plans over LAYERS layers (hypothesis)
layer_sets = st.frozensets(st.integers(0, LAYERS - 1))
skip_sets = st.builds(SkipSet, attn=layer_sets, ffn=layer_sets)


def stage_plans(max_from_step: int) -> st.SearchStrategy[StagePlan]:
    """Random stage plans: prefill and decode sets, a schedule of up to two steps starting at
    0..max_from_step (it may re-activate attention), and replacement factors."""
    return st.builds(
        StagePlan,
        prefill=skip_sets,
        decode=skip_sets,
        schedule=st.lists(st.tuples(st.integers(0, max_from_step), skip_sets), max_size=2).map(
            lambda xs: tuple(sorted(xs, key=lambda x: x[0]))),
        attn_scale=st.dictionaries(st.integers(0, LAYERS - 1), st.floats(0.5, 1.5), max_size=2),
        ffn_scale=st.dictionaries(st.integers(0, LAYERS - 1), st.floats(0.5, 1.5), max_size=2),
    )


def tiny_model(arch: str, layers: int = 4, seed: int = 0, head_scale: float = 20.0) -> torch.nn.Module:
    """A float32 model with vocabulary 96. `head_scale` multiplies an untied lm_head (gemma3's head is
    tied: unscaled). Random init leaves logits nearly flat (std ~0.16); x20 separates greedy choices
    and makes the absolute LOGIT_ATOL ~20x tighter relative to the logits' spread (an injected 0.01%
    error in batched K/V values fails the logit comparisons at x20 and passes them at x1)."""
    import transformers as tf
    torch.manual_seed(seed)
    common = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  attn_implementation="sdpa")
    # short sliding windows so that the window actually bites in the tests
    types = ["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (layers % 2)
    if arch == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common))
    elif arch == "mistral":  # every layer sliding
        model = tf.MistralForCausalLM(tf.MistralConfig(**common, sliding_window=6))
    elif arch == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common))
    elif arch == "qwen3":  # q/k norms per head
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(**common, head_dim=16))
    elif arch == "phi3":  # fused qkv and gate/up projections; half the head dimensions rotated
        rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
        model = tf.Phi3ForCausalLM(tf.Phi3Config(**common, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                                 rope_parameters=rope))
    elif arch == "gemma2":  # attention and final logit soft-capping (small caps, so that they bite)
        common["attn_implementation"] = "eager"  # transformers' gemma2 has no sdpa path (soft-capping)
        model = tf.Gemma2ForCausalLM(tf.Gemma2Config(**common, head_dim=16, sliding_window=6, layer_types=types,
                                                     query_pre_attn_scalar=16, attn_logit_softcapping=2.0,
                                                     final_logit_softcapping=1.0))
    elif arch == "gemma3":
        model = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**common, head_dim=16, sliding_window=6, layer_types=types,
                                                         query_pre_attn_scalar=16))
    elif arch == "olmo2":  # norms after each sub-layer, q/k norms over the whole projection
        model = tf.Olmo2ForCausalLM(tf.Olmo2Config(**common, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    elif arch == "granite":  # embedding, residual, attention and logit multipliers away from 1
        model = tf.GraniteForCausalLM(tf.GraniteConfig(**common, embedding_multiplier=6.0, residual_multiplier=0.5,
                                                       attention_multiplier=0.2, logits_scaling=0.25))
    else:
        raise ValueError(arch)
    if head_scale != 1.0 and not model.config.tie_word_embeddings:
        with torch.no_grad():
            model.lm_head.weight.mul_(head_scale)
    return model.eval()


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


def all_logits(executor: SkipExecutor, ids: list[int], plan: StagePlan = StagePlan()) -> torch.Tensor:
    """[len(ids), vocab] logits of one no-cache forward under the plan's prefill set."""
    cache = executor.new_cache(1)
    x = torch.tensor([ids], device=executor.device)
    return executor.forward(cache, x, torch.ones_like(x, dtype=torch.bool), plan.prefill, plan, CostMeter(),
                            logits="all")[0]


class StepLogits:
    """A `generate` token callback that records every row's logits at every step and stops nothing.

    ``rows[r]`` is the [steps, vocab] stack of row r's logits (the logits that chose its tokens)."""

    def __init__(self) -> None:
        self._steps: dict[int, list[torch.Tensor]] = {}

    def __call__(self, step: int, logits: torch.Tensor, tokens: torch.Tensor, row_ids: torch.Tensor) -> torch.Tensor:
        for r, row_logits in zip(row_ids.tolist(), logits):
            self._steps.setdefault(r, []).append(row_logits.detach().clone())
        return torch.zeros_like(tokens, dtype=torch.bool)

    def row(self, r: int, steps: int | None = None) -> torch.Tensor:
        """Row r's logits at its first `steps` steps (all by default)."""
        return torch.stack(self._steps[r][:steps])


def assert_close(got: torch.Tensor, ref: torch.Tensor, atol: float = LOGIT_ATOL) -> None:
    """allclose with the largest difference in the failure message."""
    assert got.shape == ref.shape, (got.shape, ref.shape)
    diff = (got.float() - ref.float()).abs().max().item()
    assert diff <= atol, f"max |diff| = {diff:.3g} > {atol:g}"
