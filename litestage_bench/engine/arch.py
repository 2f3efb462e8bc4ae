"""Architecture adapters: the pieces of a decoder layer the executor calls, per model family.

The executor owns the layer loop (forward hooks cannot skip compute), so it needs each family's
sub-layer boundaries: llama, mistral, qwen2, qwen3 and phi3 are ``x + attn(LN(x))`` then
``h + mlp(LN(h))``; gemma2/gemma3 add a norm after attention and pre/post norms around the MLP
(gemma3: per-layer-type rotary tables), olmo2 normalises only the sub-layers' outputs, granite scales
the embeddings, each sub-layer's output and the logits by constants. The attention modules themselves
are transformers' own, called with the executor's cache object, so q/k norms, fused projections,
biases and scaling stay each family's.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserError

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text", "gemma3", "olmo2", "granite")
# families whose decoder layer wraps the FFN in pre/post norms and normalises the attention output
_GEMMA_LIKE = ("gemma2", "gemma3_text", "gemma3")


def check_supported(model_type: str | None) -> None:
    """UserError naming the supported families unless the executor can run `model_type`."""
    if model_type not in SUPPORTED:
        raise UserError(f"model type '{model_type}' is not supported by the skip executor",
                        f"use a model of type {', '.join(SUPPORTED)}")


class ArchAdapter:
    """Uniform access to embeddings, layers, norms, rotary tables and per-sub-layer FLOPs."""

    def __init__(self, model: nn.Module) -> None:
        config = model.config
        model_type = getattr(config, "model_type", "?")
        check_supported(model_type)
        base = model.model
        if model_type == "gemma3":  # multimodal wrapper: use its text model
            base = base.language_model
            config = config.get_text_config()
        # The executor passes boolean masks, which the sdpa attention path reads as "may attend".
        config._attn_implementation = register_attention()
        self.config = config
        self.model_type = model_type
        self.is_gemma = model_type in _GEMMA_LIKE
        self.is_olmo2 = model_type == "olmo2"  # no input norms: the sub-layers' outputs are normalised
        self.embed_tokens = base.embed_tokens
        self.layers = list(base.layers)
        self.norm = base.norm
        self.lm_head = model.lm_head
        self.rotary = base.rotary_emb
        self.num_layers = len(self.layers)
        self.sliding_window = getattr(config, "sliding_window", None)
        # mistral and phi3 have no layer types: a configured window applies to every layer
        default_type = "sliding_attention" if self.sliding_window else "full_attention"
        self.layer_types = list(getattr(config, "layer_types", None) or [default_type] * self.num_layers)
        self._rotary_takes_type = "layer_type" in inspect.signature(self.rotary.forward).parameters
        # granite's constants (1.0 elsewhere); gemma's embedding scale lives in its embedding module
        self.embedding_multiplier = getattr(config, "embedding_multiplier", 1.0) if model_type == "granite" else 1.0
        self.residual_multiplier = getattr(config, "residual_multiplier", 1.0) if model_type == "granite" else 1.0
        self.logits_scaling = getattr(config, "logits_scaling", 1.0) if model_type == "granite" else 1.0
        # gemma2's and gemma3's causal-LM heads soft-cap the logits when configured (gemma3's multimodal one never)
        capped = model_type in ("gemma2", "gemma3_text")
        self.final_softcap = getattr(config, "final_logit_softcapping", None) if capped else None
        self.attn_flops = [2 * _params(layer.self_attn) for layer in self.layers]
        self.ffn_flops = [2 * _params(layer.mlp) for layer in self.layers]
        self.kv_flops = [2 * _kv_params(layer.self_attn) for layer in self.layers]
        self.head_flops = 2 * self.lm_head.weight.numel()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The residual stream's start: token embeddings (times granite's embedding multiplier)."""
        hidden = self.embed_tokens(input_ids)
        return hidden * self.embedding_multiplier if self.embedding_multiplier != 1.0 else hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and head, with granite's logit scaling or gemma's final soft-capping."""
        out = self.lm_head(self.norm(hidden))
        if self.logits_scaling != 1.0:
            out = out / self.logits_scaling
        if self.final_softcap is not None:
            out = torch.tanh(out / self.final_softcap) * self.final_softcap
        return out

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
        normed = x if self.is_olmo2 else block.input_layernorm(x)
        out, _ = block.self_attn(hidden_states=normed, position_embeddings=rope,
                                 attention_mask=mask, past_key_values=cache, **{EXECUTOR_FLAG: True})
        if self.is_gemma or self.is_olmo2:
            out = block.post_attention_layernorm(out)
        return self._residual(out)

    def ffn_delta(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """The FFN sub-layer's contribution to the residual stream."""
        block = self.layers[layer]
        if self.is_gemma:
            return block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(h)))
        if self.is_olmo2:
            return block.post_feedforward_layernorm(block.mlp(h))
        return self._residual(block.mlp(block.post_attention_layernorm(h)))

    def _residual(self, out: torch.Tensor) -> torch.Tensor:
        """A sub-layer's output as added to the stream (granite scales it by its residual multiplier)."""
        return out * self.residual_multiplier if self.residual_multiplier != 1.0 else out

    def kv_only(self, layer: int, x: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values a skipped attention sub-layer would have written (for later readers)."""
        block = self.layers[layer]
        attn = block.self_attn
        normed = x if self.is_olmo2 else block.input_layernorm(x)
        shape = (*normed.shape[:-1], -1, attn.head_dim)
        if hasattr(attn, "qkv_proj"):  # phi3: one fused projection, queries first, then keys, values
            qkv = attn.qkv_proj
            kv_width = attn.num_key_value_heads * attn.head_dim
            q_width = qkv.out_features - 2 * kv_width
            if type(qkv) is nn.Linear:  # only the key/value rows
                bias = None if qkv.bias is None else qkv.bias[q_width:]
                kv = F.linear(normed, qkv.weight[q_width:], bias)
            else:  # a converted layer (bf16-matmul numerics): its own arithmetic, queries discarded
                kv = qkv(normed)[..., q_width:]
            key, value = kv.split(kv_width, dim=-1)
        else:
            key, value = attn.k_proj(normed), attn.v_proj(normed)
        if self.is_olmo2:  # olmo2 normalises the whole key projection, before the split into heads
            key = attn.k_norm(key)
        key = key.view(shape).transpose(1, 2)
        value = value.view(shape).transpose(1, 2)
        if hasattr(attn, "k_norm") and not self.is_olmo2:
            key = attn.k_norm(key)
        cos, sin = rope
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        # partial rotary embeddings (phi3 may use them) rotate only the first cos-width dimensions
        width = cos.shape[-1]
        rot, rest = key[..., :width], key[..., width:]
        half = width // 2
        rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
        return torch.cat((rot * cos + rotated * sin, rest), dim=-1), value


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

    softcap = kwargs.get("softcap")
    if softcap is not None:  # gemma2's attention-logit soft-capping: SDPA cannot do it
        return _softcapped_attention(module, query, key, value, attention_mask, scaling, softcap)
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


def _softcapped_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, scaling: float | None,
                          softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with ``softcap * tanh(scores / softcap)`` (transformers' gemma2 eager path),
    reading boolean "may attend" masks, additive float masks, or none (plain causal)."""
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    q_len, k_len = scores.shape[-2:]
    if attention_mask is None:  # transformers drops a purely causal mask: rebuild it, bottom-right aligned
        attention_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
    if attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask[..., :k_len], torch.finfo(scores.dtype).min)
    else:
        scores = scores + attention_mask[..., :k_len]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


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


def _kv_params(attn: nn.Module) -> int:
    """Parameters that produce keys and values (phi3: the k/v rows of its fused projection)."""
    if hasattr(attn, "qkv_proj"):
        kv_rows = 2 * attn.num_key_value_heads * attn.head_dim
        per_row = attn.qkv_proj.in_features + (attn.qkv_proj.bias is not None)
        return kv_rows * per_row
    return _params(attn.k_proj) + _params(attn.v_proj)
