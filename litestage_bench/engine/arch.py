"""Architecture adapters: the pieces of a decoder layer the executor calls, per model family.

The executor owns the layer loop (forward hooks cannot skip compute), so it needs each family's
sub-layer boundaries: llama and qwen2 are ``x + attn(LN(x))`` then ``h + mlp(LN(h))``; gemma3 adds a
norm after attention and pre/post norms around the MLP, per-layer-type rotary tables and
sliding-window layers. The attention modules themselves are transformers' own, called with the
executor's cache object, so q/k norms, biases and scaling stay each family's.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserError

SUPPORTED = ("llama", "qwen2", "gemma3_text", "gemma3")


class ArchAdapter:
    """Uniform access to embeddings, layers, norms, rotary tables and per-sub-layer FLOPs."""

    def __init__(self, model: nn.Module) -> None:
        config = model.config
        model_type = getattr(config, "model_type", "?")
        if model_type not in SUPPORTED:
            raise UserError(f"model type '{model_type}' is not supported by the skip executor",
                            f"use a model of type {', '.join(SUPPORTED)}")
        base = model.model
        if model_type == "gemma3":  # multimodal wrapper: use its text model
            base = base.language_model
            config = config.get_text_config()
        # The executor passes boolean masks, which the sdpa attention path reads as "may attend".
        config._attn_implementation = register_attention()
        self.config = config
        self.model_type = model_type
        self.is_gemma = model_type.startswith("gemma3")
        self.embed = base.embed_tokens
        self.layers = list(base.layers)
        self.norm = base.norm
        self.lm_head = model.lm_head
        self.rotary = base.rotary_emb
        self.num_layers = len(self.layers)
        self.layer_types = list(getattr(config, "layer_types", None) or ["full_attention"] * self.num_layers)
        self.sliding_window = getattr(config, "sliding_window", None)
        self._rotary_takes_type = "layer_type" in inspect.signature(self.rotary.forward).parameters
        self.attn_flops = [2 * _params(layer.self_attn) for layer in self.layers]
        self.ffn_flops = [2 * _params(layer.mlp) for layer in self.layers]
        self.kv_flops = [2 * (_params(layer.self_attn.k_proj) + _params(layer.self_attn.v_proj))
                         for layer in self.layers]
        self.head_flops = 2 * self.lm_head.weight.numel()

    def rope(self, hidden: torch.Tensor, positions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """cos/sin tables for each layer (one computation per layer type)."""
        if not self._rotary_takes_type:
            table = self.rotary(hidden, positions)
            return [table] * self.num_layers
        tables = {t: self.rotary(hidden, positions, t) for t in set(self.layer_types)}
        return [tables[t] for t in self.layer_types]

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == "sliding_attention" and bool(self.sliding_window)

    def attn_delta(self, layer: int, x: torch.Tensor, rope, mask, cache) -> torch.Tensor:
        """The attention sub-layer's contribution to the residual stream."""
        block = self.layers[layer]
        out, _ = block.self_attn(hidden_states=block.input_layernorm(x), position_embeddings=rope,
                                 attention_mask=mask, past_key_values=cache, **{EXECUTOR_FLAG: True})
        if self.is_gemma:
            out = block.post_attention_layernorm(out)
        return out

    def ffn_delta(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """The FFN sub-layer's contribution to the residual stream."""
        block = self.layers[layer]
        if self.is_gemma:
            return block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(h)))
        return block.mlp(block.post_attention_layernorm(h))

    def kv_only(self, layer: int, x: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values a skipped attention sub-layer would have written (for later readers)."""
        block = self.layers[layer]
        attn = block.self_attn
        normed = block.input_layernorm(x)
        shape = (*normed.shape[:-1], -1, attn.head_dim)
        key = attn.k_proj(normed).view(shape).transpose(1, 2)
        value = attn.v_proj(normed).view(shape).transpose(1, 2)
        if hasattr(attn, "k_norm"):
            key = attn.k_norm(key)
        cos, sin = rope
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        half = key.shape[-1] // 2
        rotated = torch.cat((-key[..., half:], key[..., :half]), dim=-1)
        return key * cos + rotated * sin, value


ATTENTION_NAME = "litestage_sdpa"
EXECUTOR_FLAG = "litestage_executor"


def _sdpa_grouped(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                  **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, except that a block of several queries attends to grouped
    key/value heads in place (SDPA's ``enable_gqa``) instead of copying each kv head per query head
    (``repeat_kv``). transformers takes the grouped path only without a mask, and the executor always
    passes one; the copy of a long cache per layer cost 16% of a batched 1.5B question. Single-query
    steps keep transformers' own path. Both give the same bits (tests/test_numerics.py)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    # only the executor's calls (flagged, always with a boolean mask) take the grouped path; transformers'
    # own callers (`generate`, a plain forward) get exactly their sdpa
    executor_call = kwargs.pop(EXECUTOR_FLAG, False)
    if (not executor_call or groups == 1 or query.shape[2] == 1 or attention_mask is None
            or kwargs.get("position_bias") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> str:
    """Register the executor's attention function with transformers; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, _sdpa_grouped)
    # transformers' own forwards build their masks by implementation name: sdpa's, as before
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
