"""Skip plans: which sub-layers each stage skips, per decode step, and what replaces them.

A ``SkipSet`` names skipped attention and FFN sub-layers by layer index. A ``StagePlan`` holds the
set used for the stage's prefill, the set used for decode, an optional per-position schedule
(decode step t uses the last schedule entry with ``from_step <= t``: SkipDecode), optional per-token
FFN skipping decided online from similarities (AdaSkip's decode extension), and the replacement of a
skipped sub-layer: identity (factor 1) or the sub-layer input scaled by a factor (AdaSkip).
A stage plan may instead carry a ``Draft``: the stage then computes dense (lossless) and only drafts
its tokens under the draft's skips, verified by the full model (``engine/speculative.py``).
A ``SkipPlan`` maps stage names to stage plans; stages it does not name run dense.
Plans serialise to and from JSON (``to_dict`` / ``from_dict``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.errors import UserError
from ..core.schema import Checker

PLAN_SCHEMA_VERSION = 1
STAGES = ("recall", "analyze", "summarize")  # the reasoner's stages, in order
SUBLAYERS = ("attn", "ffn")
PREFILL_STEP = -1  # the step index the executor uses for a stage's prompt tokens


@dataclass(frozen=True)
class SkipSet:
    """Skipped sub-layers: attention and FFN layer indices."""

    attn: frozenset[int] = frozenset()
    ffn: frozenset[int] = frozenset()

    @staticmethod
    def of(attn: Any = (), ffn: Any = ()) -> "SkipSet":
        return SkipSet(frozenset(int(i) for i in attn), frozenset(int(i) for i in ffn))

    @staticmethod
    def layers(indices: Any) -> "SkipSet":
        """Whole layers: both sub-layers of each index."""
        idx = frozenset(int(i) for i in indices)
        return SkipSet(idx, idx)

    def __bool__(self) -> bool:
        return bool(self.attn or self.ffn)

    def union(self, other: "SkipSet") -> "SkipSet":
        return SkipSet(self.attn | other.attn, self.ffn | other.ffn)

    def to_dict(self) -> dict[str, list[int]]:
        return {"attn": sorted(self.attn), "ffn": sorted(self.ffn)}

    @staticmethod
    def from_dict(data: dict) -> "SkipSet":
        return SkipSet.of(data.get("attn", ()), data.get("ffn", ()))


@dataclass(frozen=True)
class DynamicFFN:
    """Per-sequence online FFN skipping (AdaSkip decode extension).

    During the first ``warmup_steps`` decode steps the executor averages cos(h, h + FFN(h)) of each
    candidate FFN per sequence; afterwards a sequence skips every candidate whose mean is >= threshold.
    """

    candidates: frozenset[int]
    threshold: float
    warmup_steps: int = 20

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": sorted(self.candidates), "threshold": self.threshold,
                "warmup_steps": self.warmup_steps}

    @staticmethod
    def from_dict(data: dict) -> "DynamicFFN":
        return DynamicFFN(frozenset(int(i) for i in data["candidates"]), float(data["threshold"]),
                          int(data.get("warmup_steps", 20)))


@dataclass(frozen=True)
class Draft:
    """Self-speculative decoding of a stage: draft up to `k` tokens per round under `plan`'s decode
    sets, stop a round early once a draft's max probability is below `min_confidence` (None: never),
    verify with the full model. Outputs are dense's; only speed depends on the draft."""

    plan: "StagePlan"
    k: int = 4
    min_confidence: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"skip": self.plan.decode.to_dict(), "k": self.k, "min_confidence": self.min_confidence}

    @staticmethod
    def from_dict(data: dict) -> "Draft":
        conf = data.get("min_confidence")
        return Draft(StagePlan(decode=SkipSet.from_dict(data.get("skip", {}))), int(data.get("k", 4)),
                     None if conf is None else float(conf))


@dataclass(frozen=True)
class StagePlan:
    """What one stage skips: in prefill, in decode, per position, per token."""

    prefill: SkipSet = SkipSet()
    decode: SkipSet = SkipSet()
    schedule: tuple[tuple[int, SkipSet], ...] = ()  # (from_step, set) sorted by from_step
    attn_scale: dict[int, float] = field(default_factory=dict)  # replacement = input * factor
    ffn_scale: dict[int, float] = field(default_factory=dict)
    dynamic_ffn: DynamicFFN | None = None
    draft: Draft | None = None  # lossless: the stage runs dense, its tokens drafted under this

    @staticmethod
    def static(skip: SkipSet) -> "StagePlan":
        """The same skip set for prefill and decode."""
        return StagePlan(prefill=skip, decode=skip)

    def skip_at(self, step: int) -> SkipSet:
        """The skip set for a step (PREFILL_STEP for prompt tokens, 0.. for generated tokens)."""
        if step == PREFILL_STEP:
            return self.prefill
        chosen = self.decode
        for from_step, skip in self.schedule:
            if step >= from_step:
                chosen = skip
            else:
                break
        return chosen

    def scoring_set(self) -> SkipSet:
        """The skip set of tokens appended after the generation (answer scoring): the set in effect
        at the end of the schedule (the decode set without one). The executor writes keys/values
        for every attention layer this set runs (``fill``), so scoring is exact after any schedule;
        per-token FFN rules (``dynamic_ffn``) do not apply to scoring (those FFNs run)."""
        return self.schedule[-1][1] if self.schedule else self.decode

    def uniform_signature(self) -> tuple | None:
        """A hashable description if every token (prompt and generated) sees the same skips and
        replacements, else None. Stages with equal signatures compute identical KV entries."""
        if self.prefill != self.decode or self.schedule or self.dynamic_ffn:
            return None
        return (self.prefill, tuple(sorted(self.attn_scale.items())), tuple(sorted(self.ffn_scale.items())))

    def is_dense(self) -> bool:
        """Nothing skipped and nothing drafted."""
        return not (self.prefill or self.decode or any(s for _, s in self.schedule) or self.dynamic_ffn
                    or self.draft)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefill": self.prefill.to_dict(),
            "decode": self.decode.to_dict(),
            "schedule": [{"from_step": f, "skip": s.to_dict()} for f, s in self.schedule],
            "attn_scale": {str(k): v for k, v in sorted(self.attn_scale.items())},
            "ffn_scale": {str(k): v for k, v in sorted(self.ffn_scale.items())},
            "dynamic_ffn": self.dynamic_ffn.to_dict() if self.dynamic_ffn else None,
            **({"draft": self.draft.to_dict()} if self.draft else {}),
        }

    @staticmethod
    def from_dict(data: dict) -> "StagePlan":
        schedule = tuple(sorted(((int(e["from_step"]), SkipSet.from_dict(e["skip"]))
                                 for e in data.get("schedule", ())), key=lambda entry: entry[0]))
        return StagePlan(
            prefill=SkipSet.from_dict(data.get("prefill", {})),
            decode=SkipSet.from_dict(data.get("decode", {})),
            schedule=schedule,
            attn_scale={int(k): float(v) for k, v in data.get("attn_scale", {}).items()},
            ffn_scale={int(k): float(v) for k, v in data.get("ffn_scale", {}).items()},
            dynamic_ffn=DynamicFFN.from_dict(data["dynamic_ffn"]) if data.get("dynamic_ffn") else None,
            draft=Draft.from_dict(data["draft"]) if data.get("draft") else None,
        )

    def validate(self, num_layers: int) -> None:
        sets = [self.prefill, self.decode, *(s for _, s in self.schedule)]
        if self.draft is not None:
            if self.prefill or self.decode or self.schedule or self.dynamic_ffn or self.attn_scale or self.ffn_scale:
                raise UserError("a drafted stage must compute dense: its own skip sets must be empty",
                                "put the skips in the draft (plan format: litestage_bench/engine/plan.py)")
            if self.draft.k < 1:
                raise UserError(f"draft length k must be >= 1, got {self.draft.k}", "use k = 1..8")
            sets.append(self.draft.plan.decode)
        used = set().union(*(s.attn | s.ffn for s in sets), self.attn_scale, self.ffn_scale,
                           self.dynamic_ffn.candidates if self.dynamic_ffn else ())
        bad = sorted(i for i in used if not 0 <= i < num_layers)
        if bad:
            raise UserError(f"plan names layers {bad} but the model has {num_layers} layers (0..{num_layers - 1})",
                            "rebuild the plan / policy for this model")


@dataclass(frozen=True)
class SkipPlan:
    """A method's plan for every stage; unnamed stages run dense."""

    stages: dict[str, StagePlan] = field(default_factory=dict)
    name: str = "dense"

    def for_stage(self, stage: str) -> StagePlan:
        return self.stages.get(stage, DENSE_STAGE)

    @staticmethod
    def uniform(stage_plan: StagePlan, stages: tuple[str, ...], name: str) -> "SkipPlan":
        return SkipPlan({s: stage_plan for s in stages}, name)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": PLAN_SCHEMA_VERSION, "name": self.name,
                "stages": {k: v.to_dict() for k, v in self.stages.items()}}

    @staticmethod
    def from_dict(data: dict, source: str | None = None) -> "SkipPlan":
        """A plan from its JSON form; ``UserError`` naming ``source`` (default: its "path") for a
        wrong type, an unknown stage or key, or a non-finite number."""
        check = Checker(str(source or (data.get("path") if isinstance(data, dict) else None) or "the plan"),
                        "fix the plan (format: litestage_bench/engine/plan.py) or write it again")
        check_plan_dict(data, check)
        if data.get("schema_version") != PLAN_SCHEMA_VERSION:
            raise UserError(f"plan schema_version {data.get('schema_version')!r} is not {PLAN_SCHEMA_VERSION}",
                            "regenerate the plan with this version of litestage-bench")
        return SkipPlan({k: StagePlan.from_dict(v) for k, v in data.get("stages", {}).items()},
                        str(data.get("name", "plan")))


STAGE_PLAN_KEYS = ("prefill", "decode", "schedule", "attn_scale", "ffn_scale", "dynamic_ffn", "draft")


def check_skip_set(value: Any, where: str, check: Checker, num_layers: int | None = None) -> None:
    check.keys(check.obj(value, where), where, SUBLAYERS)
    for sub in SUBLAYERS:
        if sub in value:
            check.layers(value[sub], f"{where}.{sub}", num_layers)


def check_plan_dict(data: Any, check: Checker, num_layers: int | None = None) -> None:
    """The JSON form of a ``SkipPlan`` (``to_dict``): types, stage names, layer indices (in range
    when ``num_layers`` is given), finite factors and thresholds."""
    check.obj(data, "plan")
    check.string(data.get("name", ""), "name")
    stages = check.keys(check.obj(data.get("stages"), "stages", optional=True), "stages", STAGES, "stage")
    for stage, plan in stages.items():
        at = f"stages.{stage}"
        check.keys(check.obj(plan, at), at, STAGE_PLAN_KEYS)
        for part in ("prefill", "decode"):
            check_skip_set(plan.get(part, {}), f"{at}.{part}", check, num_layers)
        for i, entry in enumerate(check.lst(plan.get("schedule"), f"{at}.schedule", optional=True)):
            where = f"{at}.schedule[{i}]"
            check.keys(check.obj(entry, where), where, ("from_step", "skip"))
            check.whole(entry.get("from_step"), f"{where}.from_step", 0)
            check_skip_set(entry.get("skip"), f"{where}.skip", check, num_layers)
        for part in ("attn_scale", "ffn_scale"):
            for layer, factor in check.obj(plan.get(part), f"{at}.{part}", optional=True).items():
                if not str(layer).isdigit():
                    raise check.fail(f"{at}.{part}", "an object keyed by layer index", layer)
                check.layers([int(layer)], f"{at}.{part}", num_layers)
                check.number(factor, f"{at}.{part}.{layer}")
        if plan.get("dynamic_ffn") is not None:
            where = f"{at}.dynamic_ffn"
            dyn = check.keys(check.obj(plan["dynamic_ffn"], where), where, ("candidates", "threshold", "warmup_steps"))
            check.layers(dyn.get("candidates"), f"{where}.candidates", num_layers)
            check.number(dyn.get("threshold"), f"{where}.threshold")
            check.whole(dyn.get("warmup_steps", 20), f"{where}.warmup_steps", 0)
        if plan.get("draft") is not None:
            where = f"{at}.draft"
            draft = check.keys(check.obj(plan["draft"], where), where, ("skip", "k", "min_confidence"))
            check_skip_set(draft.get("skip", {}), f"{where}.skip", check, num_layers)
            check.whole(draft.get("k", 4), f"{where}.k", 1)
            if draft.get("min_confidence") is not None:
                check.number(draft["min_confidence"], f"{where}.min_confidence")


DENSE_STAGE = StagePlan()
DENSE = SkipPlan()


def even_layers(num_layers: int, count: int) -> list[int]:
    """`count` layers spread evenly over the inner layers (first and last kept)."""
    inner = list(range(1, num_layers - 1))
    step = len(inner) / count
    return sorted({inner[int(i * step + step / 2)] for i in range(count)})
