"""Tiny randomly initialised models of each supported architecture (seconds to build and run),
and helpers shared by the executor and scoring tests."""
from __future__ import annotations

import copy

import torch

from litestage_bench.engine.executor import CostMeter, SkipExecutor
from litestage_bench.engine.plan import StagePlan

ARCHS = ("llama", "qwen2", "gemma3")
LOGIT_ATOL = 1e-4  # float32; observed differences are ~1e-6 on the tiny models
PROMPT = [5, 17, 33, 2, 81, 40, 9, 64, 12, 7, 55, 3]


def tiny_model(arch: str, layers: int = 4, seed: int = 0, head_scale: float = 20.0) -> torch.nn.Module:
    """A float32 model with vocabulary 96. `head_scale` multiplies an untied lm_head (gemma3's head is
    tied: unscaled). Random init leaves logits nearly flat (std ~0.16); x20 separates greedy choices
    and makes the absolute LOGIT_ATOL ~20x tighter relative to the logits' spread (an injected 0.01%
    error in batched K/V values fails the logit comparisons at x20 and passes them at x1)."""
    from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)
    torch.manual_seed(seed)
    common = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  attn_implementation="sdpa")
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "gemma3":
        # a short sliding window so that the window actually bites in the tests
        types = ["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (layers % 2)
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, head_dim=16, sliding_window=6, layer_types=types,
                                                   query_pre_attn_scalar=16))
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
