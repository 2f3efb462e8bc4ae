"""ShortGPT-style layer removal (Men et al. 2024, arXiv 2403.03853): Block Influence
BI_i = 1 - E_t cos(x_i,t, x_i+1,t) of each layer over calibration text; remove the k layers of
lowest BI (every layer is a candidate, as in the paper).

Calibration text (suite decision, replacing the paper's PG19 windows): the dense reasoner's prompt
plus output of every stage on the calibration questions (stage 2: one per option), only the tokens
after the shared few-shot header (identical in every prompt). The expectation runs over all those
tokens (token-weighted). The layer input/output are the residual stream before the layer's
attention and after its FFN, never the final-normed state that transformers' `output_hidden_states`
puts last (anchors A.2). Ties keep layer order.

`litestage-bench search --method shortgpt` writes the BI vector and the ranking;
`run --method shortgpt --policy P --k K` removes the first K. Removal = skipping the layer for
prompt and generated tokens alike.
"""
from __future__ import annotations

from typing import Any

from litestage_bench.engine.plan import StagePlan
from litestage_bench.methods.registry import register, register_search

from .common import (Baseline, LayerCosine, all_stage_texts, calibrate, dense_prefills, layer_list, policy_record,
                     section, skip_layers_plan)

DEFAULT_LIMIT = 50  # calibration questions: LiteStage's default, so both see the same items


def block_influence(ex, texts, batch_size: int) -> list[float]:
    probe = LayerCosine(ex.num_layers)
    dense_prefills(ex, texts.header, all_stage_texts(texts), probe, batch_size)
    return [1.0 - c for c in probe.means()]


def bi_ranking(bi: list[float]) -> list[int]:
    """Layers, lowest Block Influence first (ties: lower index first)."""
    return sorted(range(len(bi)), key=lambda j: (bi[j], j))


@register("shortgpt")
class ShortGPT(Baseline):
    name = "shortgpt"
    needs_search = True
    unit = "layers to remove (lowest Block Influence first)"
    reference = "Men et al. 2024, arXiv 2403.03853; code icip-cas/ShortGPT"

    def read_params(self, policy: dict[str, Any]) -> dict[str, Any]:
        layer_list(policy, "ranking", self.name, length=policy.get("num_layers"))
        return {"phase": "all", "calibration": section(policy, "calibration", self.name).get("n")}

    def stage_plan(self, num_layers: int) -> StagePlan:
        layers = sorted(self.policy["ranking"][:self.k])
        bi = self.policy.get("block_influence") or []
        self.details = {"layers": layers, "block_influence": [bi[j] for j in layers if j < len(bi)]}
        return skip_layers_plan(layers, "all")


@register_search("shortgpt")
def search(session, bench: str, args, config, command: str, log) -> dict:
    cal = calibrate(session, bench, args, config, "shortgpt", DEFAULT_LIMIT, log)
    log(f"[search] shortgpt: Block Influence over {len(all_stage_texts(cal.texts))} stage texts")
    bi = block_influence(cal.ex, cal.texts, args.batch_size)
    options = {"limit": len(cal.items), "seed": args.seed, "batch_size": args.batch_size,
               "text": "every stage's prompt + dense output, tokens after the shared header",
               "average": "token-weighted mean cosine"}
    return policy_record("shortgpt", session, bench, config, cal, command, options,
                         block_influence=bi, ranking=bi_ranking(bi))
