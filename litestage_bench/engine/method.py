"""What a skipping method is to the engine: model facts in, a skip plan and per-token callbacks out.

Implementations live in ``litestage_bench.methods`` (the registry and LiteStage) and ``baselines``;
everything below them (evaluation, records) sees only this interface.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from .executor import SkipExecutor, TokenCallback
from .plan import SkipPlan


@dataclass(frozen=True)
class ModelFacts:
    """What a method may know about the model when it builds a plan."""

    name: str
    num_layers: int
    attn_flops: tuple[int, ...]
    ffn_flops: tuple[int, ...]


class Method(ABC):
    """A skipping method: a plan for every stage, and optionally per-token callbacks."""

    name: str = "?"
    needs_search: bool = False  # True: `litestage-bench search` must produce its policy first

    @abstractmethod
    def plan(self, facts: ModelFacts) -> SkipPlan:
        """The skip plan for this model."""

    def token_callback(self, stage: str) -> TokenCallback | None:
        """Called on every generated token of a stage; may end sequences early."""
        return None

    def describe(self) -> dict[str, Any]:
        """The method's parameters, for the result record's `policy` field."""
        return {"name": self.name}

    def check_model(self, model: str) -> None:
        """Fail early (before loading the model) when the method's policy is for another model."""


def model_facts(executor: SkipExecutor, name: str) -> ModelFacts:
    arch = executor.arch
    return ModelFacts(name=name, num_layers=arch.num_layers, attn_flops=tuple(arch.attn_flops),
                      ffn_flops=tuple(arch.ffn_flops))
