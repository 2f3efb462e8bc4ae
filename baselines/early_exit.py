"""Static early exit: the last k layers never run; the final norm and the LM head still do (they
read the residual stream after layer L-k-1). The executor always applies norm + head, so skipping
the layers is the whole method.

Reference: AdaSkip's `*_EE` re-implementation (ASISys/AdaSkip), which skips the last N layers.
Suite decision: `phase` "all" (default, the same as a model truncated to L-k layers) or "decode"
(prompts run dense, as AdaSkip's decode-task runs do).
"""
from __future__ import annotations

from litestage_bench.methods.registry import register

from .common import FixedLayersBaseline


@register("early_exit")
class EarlyExit(FixedLayersBaseline):
    name = "early_exit"
    unit = "last layers to skip"
    reference = "static early exit; AdaSkip's *_EE baseline (ASISys/AdaSkip)"

    def layers(self, num_layers: int) -> list[int]:
        return list(range(num_layers - self.k, num_layers))
