"""SkipDecode (Del Corro et al. 2023, arXiv 2307.02628): at generated position t skip the lower
layers 1..s(t), with s rising monotonically to a maximum k; layer 0 always runs. Every row of a
batch is at the same generated position, so the whole batch shares one exit point per step, and
a layer skipped at step t stays skipped afterwards: its missing keys/values are never read.

There is no official code; the schedule follows AdaSkip's re-implementation (ASISys/AdaSkip
`*_SD`): s(t) = 1 + ceil(t / MAX_GEN * (N - 1)), capped at N. Here, per stage with cap T
(`max_new_tokens`; the reasoner's defaults 48/32/16):

    s(t) = min(k, m + ceil((k - m) * t / max(T - 2, 1))),   m = min(min_skip, k)

where t = 0, 1, ... is the decode step (step t feeds generated token t and predicts token t+1;
token 0 comes from the prefill, so a stage has at most T - 1 decode steps, the last being T - 2).
Suite decision: the ramp spans T - 2 steps instead of the reference's MAX_GEN = T, so that s
reaches k at the stage's last decode step (with T = 16 and the reference's ramp, any k > 8 would
never be reached in Summarize). Rows that stop early simply stop on the ramp.

Prefill runs dense, as in the paper and the reference (they skip only generated tokens; skipping
prompt tokens harms far more, anchors P-7). Tokens appended after the generation (answer scoring
after Summarize) skip layers 1..k, the schedule continued past the cap (the last schedule entry and
the plan's decode set are both layers 1..k), so no layer skipped during the generation is read again.
"""
from __future__ import annotations

import math
from typing import Any

from litestage_bench.core.errors import UserError
from litestage_bench.engine.plan import STAGES, SkipPlan, SkipSet, StagePlan
from litestage_bench.evaluation.reasoner import DEFAULT_MAX_NEW_TOKENS
from litestage_bench.methods.registry import register

from .common import Baseline, choice, whole


def skip_counts(k: int, cap: int, min_skip: int = 1) -> list[int]:
    """s(t) for each decode step t = 0 .. cap - 2 of a stage with `cap` max new tokens."""
    m = min(min_skip, k)
    ramp = max(cap - 2, 1)
    return [min(k, m + math.ceil((k - m) * t / ramp)) for t in range(max(cap - 1, 0))]


def schedule_plan(k: int, cap: int, min_skip: int = 1) -> StagePlan:
    """Dense prefill; decode step t skips layers 1..s(t); after the generation, layers 1..k."""
    if k == 0:
        return StagePlan()
    schedule, last = [], None
    for t, s in enumerate(skip_counts(k, cap, min_skip)):
        if s != last:
            schedule.append((t, SkipSet.layers(range(1, s + 1))))
            last = s
    return StagePlan(prefill=SkipSet(), decode=SkipSet.layers(range(1, k + 1)), schedule=tuple(schedule))


@register("skipdecode")
class SkipDecode(Baseline):
    name = "skipdecode"
    unit = "lower layers skipped at most (layers 1..k)"
    reference = "Del Corro et al. 2023, arXiv 2307.02628; schedule from AdaSkip's *_SD re-implementation"
    takes_stage_caps = True  # the CLI passes --max-new-tokens as policy["max_new_tokens"]

    def read_params(self, policy: dict[str, Any]) -> dict[str, Any]:
        caps = policy.get("max_new_tokens") or dict(DEFAULT_MAX_NEW_TOKENS)
        if not isinstance(caps, dict) or set(caps) != set(STAGES) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in caps.values()):
            raise UserError(f"skipdecode: max_new_tokens={caps!r} is not a positive whole number per stage",
                            "pass --max-new-tokens RECALL,ANALYZE,SUMMARIZE, e.g. 48,32,16")
        return {"min_skip": whole(policy, "min_skip", 1, 1, self.name), "max_new_tokens": dict(caps),
                "prefill": choice(policy, "prefill", "dense", ("dense",), self.name)}

    def build(self, num_layers: int) -> SkipPlan:
        p = self.params
        stages = {s: schedule_plan(self.k, p["max_new_tokens"][s], p["min_skip"]) for s in STAGES}
        self.details = {"skip_counts": {s: skip_counts(self.k, p["max_new_tokens"][s], p["min_skip"])
                                        for s in STAGES}}
        stages = {s: plan for s, plan in stages.items() if not plan.is_dense()}
        return SkipPlan(stages, self.name) if stages else SkipPlan()
