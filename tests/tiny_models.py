"""Tiny randomly initialised models of each supported architecture (seconds to build and run)."""
from __future__ import annotations

import torch

ARCHS = ("llama", "qwen2", "gemma3")


def tiny_model(arch: str, layers: int = 4, seed: int = 0) -> torch.nn.Module:
    from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM)
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
    # random init leaves logits nearly flat; scale an untied head up so that greedy choices are well separated
    if not model.config.tie_word_embeddings:
        with torch.no_grad():
            model.lm_head.weight.mul_(20.0)
    return model.eval()
