"""Numerics: how the model's arithmetic is carried out, beside the dtype its tensors are stored in.

- ``float32`` / ``bfloat16``: the model in that dtype end to end (the plain transformers path).
- ``bf16-matmul``: a float32 model whose decoder-layer linear layers multiply bfloat16-rounded inputs
  by bfloat16 weights (converted once at load) with float32 accumulation; their outputs come back
  rounded to bfloat16 and then carry on in float32. Embeddings, norms, rotary tables, attention
  scores and softmax, the KV cache and the residual stream stay float32. The LM head is screened:
  bf16 logits for the whole vocabulary, then every token that could be the float32 head's top token
  (its bf16 logit within a proven error bound of the best) gets its logit recomputed in float32. So
  the greedy token equals the float32 head's on the same hidden state; other logits carry bf16 error.
  It is a different rounding of the same model, not the same numbers: its answers are compared with
  float32's and its noise floor is measured (``noise_floor.py``, ``results/numerics/``).

Why this path: on CPUs with bf16 matrix units (AVX512-BF16 / AMX) a bf16 GEMM is several times
faster than fp32 for prefill and batched decode, and a batch-1 matrix-vector product reads half the
bytes. Converting fp32 weights on every call (``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``)
makes batch-1 decode slower, hence weights converted once. The accumulation is fp32 inside the
kernel, so each output is (nearly always) the correctly rounded bf16 of the exact sum: the same for
one row and for a batch (tests/test_numerics.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserError

# numerics -> (storage dtype of the model, what it means)
NUMERICS = {
    "float32": ("float32", "float32 end to end"),
    "bfloat16": ("bfloat16", "bfloat16 end to end"),
    "bf16-matmul": ("float32", "decoder linear layers as bf16 x bf16 with fp32 accumulation (weights "
                               "converted once, outputs rounded to bf16); everything else float32"),
}


def resolve_numerics(numerics: str | None, dtype: str) -> str:
    """The numerics name to use: explicit (checked against the dtype), else the dtype's own."""
    if numerics is None or numerics == dtype:
        return dtype
    needs = storage_dtype(numerics)
    if needs != dtype:
        raise UserError(f"numerics '{numerics}' needs --dtype {needs}, not {dtype}",
                        f"drop --dtype or pass --dtype {needs}")
    return numerics


def storage_dtype(numerics: str | None) -> str | None:
    """The dtype a numerics name implies (None: let the model's default decide)."""
    if numerics is None:
        return None
    if numerics not in NUMERICS:
        raise UserError(f"unknown numerics '{numerics}'", f"use one of: {', '.join(NUMERICS)}")
    return NUMERICS[numerics][0]


def _bf16_matmul(xb: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[rows, in] bf16 @ weight.T in fp32 accumulation, as float32. One row takes torch's bf16
    matrix-vector kernel, which streams the weights at memory speed (a 1-row GEMM does not); both
    kernels give the same bits per row (tests/test_numerics.py)."""
    if xb.shape[0] == 1:
        return torch.mv(weight, xb[0])[None].float()
    return F.linear(xb, weight).float()


def text_model(model: nn.Module) -> nn.Module:
    """The decoder stack (embeddings, layers, final norm); a multimodal wrapper's (gemma3) text model."""
    base = model.model
    return base.language_model if hasattr(base, "language_model") else base


class Bf16MatmulLinear(nn.Module):
    """A linear layer with bf16 weights and bf16-rounded inputs, fp32 accumulation, fp32 result."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _bf16_matmul(x.reshape(-1, self.in_features).to(torch.bfloat16), self.weight)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


# Bound on |bf16 logit - float32 logit| for weight row w and hidden h: inputs and weights rounded to
# bf16 (unit roundoff 2^-8 each) move a product by at most ~2^-7 |w_i h_i|, so the sum by 2^-7 ||w|| ||h||
# (Cauchy-Schwarz); fp32 accumulation adds about n 2^-24 of the same on both sides. 2^-6 covers
# both with room. The bf16 rounding of the output adds 2^-8 |y|, taken as 2^-7 |y|.
_DOT_BOUND = 2.0 ** -6
_OUT_BOUND = 2.0 ** -7


class ScreenedBf16Head(nn.Module):
    """LM head: bf16 logits for all tokens, exact float32 logits for every possible argmax."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        exact = linear.weight.detach().float()
        self.weight = nn.Parameter(exact.to(torch.bfloat16), requires_grad=False)
        self.exact_weight = exact  # not a parameter: usually the (tied) float32 embedding itself
        self.row_norm = exact.norm(dim=-1)
        bias = linear.bias
        self.bias = None if bias is None else bias.detach().float()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        flat = h.reshape(-1, h.shape[-1]).float()
        y = _bf16_matmul(flat.to(torch.bfloat16), self.weight)
        if self.bias is not None:
            y = y + self.bias
        bound = self.row_norm[None, :] * (flat.norm(dim=-1, keepdim=True) * _DOT_BOUND) + y.abs() * _OUT_BOUND
        best_low = (y - bound).amax(-1, keepdim=True)
        rows, cols = ((y + bound) >= best_low).nonzero(as_tuple=True)
        exact = (self.exact_weight[cols] * flat[rows]).sum(-1)
        if self.bias is not None:
            exact = exact + self.bias[cols]
        y[rows, cols] = exact
        return y.reshape(*h.shape[:-1], -1)


def apply_numerics(model: nn.Module, numerics: str) -> int:
    """Convert the model in place for `numerics`; returns how many linear layers were converted
    (the decoder layers' linears, and the LM head as a screened head)."""
    if numerics != "bf16-matmul":
        return 0
    converted = 0
    for layer in text_model(model).layers:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, Bf16MatmulLinear(child))
                    converted += 1
    model.lm_head = ScreenedBf16Head(model.lm_head)
    return converted + 1

