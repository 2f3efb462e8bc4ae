"""Unified Layer Skipping (Liu, Meng, Zhou 2024, arXiv 2404.06954): skip k whole intermediate layers
spread evenly over the depth, the same for every input (the paper picks k from the target speedup;
here k is swept so that methods meet at matched speedup).

Layers: ``engine.plan.even_layers`` — the first and the last layer always run and the k skipped layers
sit at the centres of k equal bins of the L-2 inner layers (the paper: "intermediate layers ... in a
balanced manner"; AdaSkip's re-implementation instead skips `layer % (L // k) == 1`).
Suite decision: `phase` "all" (default: prompt and generated tokens skip the same layers, which
is what makes the strategy batch- and KV-cache-friendly) or "decode" (prompts run dense).
"""
from __future__ import annotations

from litestage_bench.engine.plan import even_layers
from litestage_bench.methods.registry import register

from .common import FixedLayersBaseline


def unified_layers(num_layers: int, k: int) -> list[int]:
    return even_layers(num_layers, k) if k else []


@register("unified")
class Unified(FixedLayersBaseline):
    name = "unified"
    unit = "intermediate layers to skip"
    reference = "Liu et al. 2024, arXiv 2404.06954 (no official code)"

    def max_k(self, num_layers: int) -> tuple[int, str]:
        return num_layers - 2, " (the first and the last layer always run)"

    def layers(self, num_layers: int) -> list[int]:
        return unified_layers(num_layers, self.k)
