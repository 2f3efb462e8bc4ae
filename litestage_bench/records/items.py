"""What happened on one question: the unit every record, comparison and timing is built from."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ItemResult:
    """What happened on one question."""

    id: str
    answer: str
    prediction: str | None
    rule: str  # which answer rule decided: "regex" | "letter" | "cloze" | "none"
    correct: bool
    latency_s: float  # end to end, all stages; nan for an item evaluated in a batch and not timed
    stage_latency_s: dict[str, float]  # {} when not timed
    tokens: dict[str, int]  # generated per stage
    outputs: dict[str, str] = field(default_factory=dict)  # generated text per stage
    predictions_by_rule: dict[str, str | None] = field(default_factory=dict)
    executed_cost_fraction: dict[str, float] = field(default_factory=dict)
    # per constrained rule, in option order: "letter" = option-letter logits, "cloze" = mean
    # log-likelihood of each option's text
    option_scores: dict[str, list[float]] = field(default_factory=dict)
    fidelity: dict = field(default_factory=dict)  # fidelity.item_fidelity vs dense; {} for dense
    # timed items: per stage, seconds and tokens of the multi-token forwards (the prompt's prefill
    # and answer scoring; for a batch of one question); the rest of the stage's time is decode
    prefill_s: dict[str, float] = field(default_factory=dict)
    prefill_tokens: dict[str, int] = field(default_factory=dict)
    # interleaved timing: one entry per round {"stage_s": {...}, "prefill_s": {...}, "first": bool}
    # (first: this pipeline ran first in the round); latency_s and stage_latency_s are their medians
    timing_rounds: list[dict] = field(default_factory=list)
    # drafted (lossless) stages: per stage the drafting counts and seconds (SpeculativeStats.summary)
    speculative: dict[str, dict] = field(default_factory=dict)
