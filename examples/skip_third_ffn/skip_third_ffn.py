"""Example method plugin: skip the FFN of every third decoder layer (layers 2, 5, 8, ...), in every
stage, for prompt and generated tokens alike."""
from __future__ import annotations

from typing import Any

from litestage_bench.engine.method import Method, ModelFacts
from litestage_bench.engine.plan import STAGES, SkipPlan, SkipSet, StagePlan


class SkipThirdFFN(Method):
    name = "skip_third_ffn"

    def __init__(self, policy: dict[str, Any] | None = None) -> None:
        # the registry calls a method with its policy dict (`--policy FILE`); this one takes none
        self.every = int((policy or {}).get("every", 3))

    def plan(self, facts: ModelFacts) -> SkipPlan:
        ffn = range(self.every - 1, facts.num_layers, self.every)
        return SkipPlan.uniform(StagePlan.static(SkipSet.of(ffn=ffn)), STAGES, self.name)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "every": self.every}
