"""What the latency model (records/latency_model.py) knows of one question under one plan: counts
that need no clock, turned into one feature row per stage and part (prefill, decode).

Prefill part (the multi-token forwards the block clock times: prompt and answer scoring): a fixed
cost per stage; per prompt token a fixed cost and a cost per executed attention / FFN sub-layer
(counts as fractions of the model's layers); per forward, a cost per executed sub-layer
(`pre_layers`); per row of the option blocks (Analyze's option suffixes, Summarize's option
scoring); per scored token (Summarize's fixed part, logits at every position).

Decode part (the rest of the stage): a fixed cost per stage; the copy of the header's cache when a
stage cannot continue the previous one (`fresh`); per decode step a fixed cost (LM head, sampling,
Python) and a cost per executed sub-layer; in Analyze, where the options decode together as rows of
one batch, each row-token beyond the first row's has its own cost of the same three kinds (steps
are estimated as tokens / options: records keep no per-option counts); per generated token of a
stage with an early-exit rule the confidence check; per decode step of a per-token FFN rule its
work; a context-length term (attention reads the cache); per drafted token of a lossless stage its
verification (verify steps count as dense steps).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import UserError
from ..engine.plan import DENSE, STAGES, Draft, DynamicFFN, SkipPlan, SkipSet, StagePlan

PREFILL_FEATURES = ("pre_recall", "pre_analyze", "pre_summarize", "pre_tok", "pre_attn", "pre_ffn",
                    "pre_layers", "pre_rows", "pre_scored")
DECODE_FEATURES = ("dec_recall", "dec_analyze", "dec_summarize", "fresh", "step", "step_attn", "step_ffn",
                   "row", "row_attn", "row_ffn", "exit", "dynamic", "ctx", "verify")
FEATURES = PREFILL_FEATURES + DECODE_FEATURES
# per-stage constants may take either sign (they absorb e.g. the first token coming from the prefill)
FREE_SIGN = frozenset({"pre_recall", "pre_analyze", "pre_summarize", "dec_recall", "dec_analyze", "dec_summarize"})
PARTS = ("prefill", "decode")
CTX_UNIT = 1000.0  # the context term counts thousands of cached tokens
# multi-token forwards per stage (evaluation/reasoner.py): under the prefill set (Recall's prompt;
# Analyze's prefix and option suffixes; Summarize's prompt), and under the scoring set (Summarize's
# rest of the summary + " So the answer is", the option texts, " option")
BLOCKS = {"recall": 1, "analyze": 2, "summarize": 1}
SCORING_BLOCKS = {"summarize": 3}


@dataclass
class ItemCounts:
    """One side of one question: what a run records without timing it."""

    tokens: dict[str, float]  # generated per stage (Analyze: summed over its option rows)
    prefill_tokens: dict[str, float] = field(default_factory=dict)  # {}: estimated from the prompt constants
    options: int = 1  # rows of the Analyze batch (the question's options)
    drafting: dict[str, dict] = field(default_factory=dict)  # drafted stages: {"drafted", "verify_steps"}
    cost_fraction: dict[str, float] = field(default_factory=dict)  # executed_cost_fraction (per-token rules)
    prompt: dict[str, float] = field(default_factory=dict)  # this question's {"recall", "summarize"} constants


def _fail(policy: Any) -> UserError:
    return UserError(f"cannot tell the skip plan of a record's policy {str(policy)[:60]!r}",
                     "give the plan as a SkipPlan dict ({'plan': ...}) or re-run the record with this version")


def plan_of_policy(policy: Any) -> tuple[SkipPlan, frozenset[str]]:
    """The skip plan and the early-exit stages of a record's `policy` (its method's describe()); a
    grid record's method runs only in its `grid_stages` (the others dense)."""
    if not isinstance(policy, dict):
        raise _fail(policy)
    restricted = policy.get("grid_stages")
    if isinstance(policy.get("stages"), list):
        # a grid record made before `grid_stages`: the list was the grid's restriction, written over
        # LiteStage's sets, which the policy file it names still holds
        restricted = policy["stages"]
        policy = {**policy, "stages": _sets_from_policy_file(policy) if policy.get("name") == "litestage" else None}
    plan, exits = _whole_plan(policy)
    if restricted is None:
        return plan, exits
    return SkipPlan({s: p for s, p in plan.stages.items() if s in restricted}, plan.name), exits & frozenset(restricted)


def _sets_from_policy_file(policy: dict) -> dict:
    import json
    from pathlib import Path

    try:
        data = json.loads(Path(policy.get("policy") or "").read_text(encoding="utf-8"))
        return {s: data["stages"][s]["skip"] for s in STAGES}
    except (OSError, ValueError, KeyError, TypeError):
        raise _fail(policy) from None


def _whole_plan(policy: dict) -> tuple[SkipPlan, frozenset[str]]:
    if isinstance(policy.get("plan"), dict):  # `--method plan`
        return SkipPlan.from_dict(policy["plan"]), frozenset()
    if isinstance(policy.get("stages"), dict):  # LiteStage: a static set per stage, exit rules per stage
        sets = {s: SkipSet.from_dict(policy["stages"].get(s) or {}) for s in STAGES}
        exits = frozenset(s for s, r in (policy.get("early_exit") or {}).items() if r)
        return SkipPlan({s: StagePlan.static(k) for s, k in sets.items() if k}), exits
    if isinstance(policy.get("drafts"), dict):  # lossless: drafted stages, computed dense
        return SkipPlan({s: StagePlan(draft=Draft.from_dict(d)) for s, d in policy["drafts"].items() if d}), frozenset()
    prefill_too = (policy.get("params") or {}).get("phase", "all") == "all"
    if isinstance(policy.get("skip_counts"), dict):  # SkipDecode: dense prefill, lower layers 1..s(t)
        stages = {}
        for s, counts in policy["skip_counts"].items():
            schedule = tuple((t, SkipSet.layers(range(1, c + 1))) for t, c in enumerate(counts)
                             if t == 0 or c != counts[t - 1])
            if counts:
                stages[s] = StagePlan(decode=SkipSet.layers(range(1, max(counts) + 1)), schedule=schedule)
        return SkipPlan(stages), frozenset()
    if isinstance(policy.get("skip"), dict):  # AdaSkip: a sub-layer set, optional per-token FFN rule
        skip, dyn = SkipSet.from_dict(policy["skip"]), policy.get("decode_ffn")
        plan = StagePlan(prefill=skip if prefill_too else SkipSet(), decode=skip,
                         dynamic_ffn=DynamicFFN.from_dict(dyn) if dyn else None)
        return SkipPlan.uniform(plan, STAGES, "adaskip"), frozenset()
    if isinstance(policy.get("layers"), list):  # whole layers (ShortGPT, SLEB, Unified, early exit)
        skip = SkipSet.layers(policy["layers"])
        plan = StagePlan(prefill=skip if prefill_too else SkipSet(), decode=skip)
        return SkipPlan.uniform(plan, STAGES, "layers"), frozenset()
    if policy.get("name") == "dense":
        return DENSE, frozenset()
    raise _fail(policy)


def reuse_flags(plan: SkipPlan, reuse_kv: bool = True) -> dict[str, bool]:
    """Per stage, whether it continues the previous stage's cache (equal uniform signatures), so that
    its prefill holds only the new tokens; otherwise it re-prefills from the shared header."""
    sigs = [plan.for_stage(s).uniform_signature() for s in STAGES]
    return {s: bool(reuse_kv and i and sigs[i] is not None and sigs[i] == sigs[i - 1]) for i, s in enumerate(STAGES)}


def estimate_prefill(stage: str, reuse: bool, counts: ItemCounts, consts: dict) -> float:
    """Prefill tokens of a stage from the prompt constants of the benchmark (records/latency_data.py):
    re-prefilling from the header adds the earlier prompt and generations that a reused cache holds."""
    p_rec = counts.prompt.get("recall", consts["recall"])
    g = counts.tokens
    if stage == "recall":
        return p_rec
    if stage == "analyze":
        return consts["analyze"] + (0.0 if reuse else p_rec + g.get("recall", 0))
    fixed = counts.prompt.get("summarize", consts["summarize"])
    return fixed + g.get("analyze", 0) + (0.0 if reuse else p_rec + g.get("recall", 0) + consts["summarize_extra"])


def _executed(skip: SkipSet, layers: int) -> tuple[float, float]:
    return float(layers - len(skip.attn)), float(layers - len(skip.ffn))


def _decode_counts(plan: StagePlan, steps: float, layers: int, attn_share: float | None,
                   fraction: float | None, rows: float) -> tuple[float, float]:
    """Mean executed attention / FFN sub-layers per decode step (schedules averaged over the steps).
    A per-token FFN rule saves time only in a single-row batch: with several rows the executor runs
    the FFN for all of them unless every row skips it (the FLOP meter counts per row)."""
    if plan.schedule:
        n = max(int(round(steps)), 1)
        per = [_executed(plan.skip_at(t), layers) for t in range(n)]
        return sum(a for a, _ in per) / n, sum(f for _, f in per) / n
    attn, ffn = _executed(plan.decode, layers)
    if plan.dynamic_ffn is not None and rows == 1 and attn_share and fraction is not None and 0 < attn_share < 1:
        # FLOP fraction = (share x attn + (1 - share) x ffn) / layers: the FFNs the rule skipped
        ffn = min(max((fraction * layers - attn_share * attn) / (1 - attn_share), 0.0), ffn)
    return attn, ffn


def _prefill(pre: np.ndarray, col: dict, stage: str, sp: StagePlan, p: float, scored: float, options: int,
             layers: int) -> None:
    """The prefill part's features: `scored` of the `p` tokens (Summarize's fixed part) run under the
    scoring set, the rest under the prefill set."""
    pa, pf = _executed(sp.prefill, layers)
    sa, sf = _executed(sp.scoring_set(), layers) if stage in SCORING_BLOCKS else (pa, pf)
    plain = p - scored
    pre[col[f"pre_{stage}"]] = 1.0
    pre[col["pre_tok"]] = p
    pre[col["pre_attn"]] = (plain * pa + scored * sa) / layers
    pre[col["pre_ffn"]] = (plain * pf + scored * sf) / layers
    pre[col["pre_layers"]] = (BLOCKS[stage] * (pa + pf) + SCORING_BLOCKS.get(stage, 0) * (sa + sf)) / (2 * layers)
    pre[col["pre_rows"]] = float(options) if stage != "recall" else 0.0
    pre[col["pre_scored"]] = scored


def item_rows(plan: SkipPlan, exits: frozenset[str], counts: ItemCounts, layers: int, consts: dict,
              attn_share: float | None = None, reuse_kv: bool = True) -> np.ndarray:
    """Feature rows [stage, part, feature] (parts: prefill, decode) of one side of one question."""
    out = np.zeros((len(STAGES), len(PARTS), len(FEATURES)))
    col = {name: j for j, name in enumerate(FEATURES)}
    reuse = reuse_flags(plan, reuse_kv)
    context = counts.prompt.get("recall", consts["recall"])
    for i, s in enumerate(STAGES):
        sp, g = plan.for_stage(s), float(counts.tokens.get(s, 0))
        rows = float(counts.options) if s == "analyze" else 1.0
        pre, dec = out[i, 0], out[i, 1]
        p = counts.prefill_tokens.get(s)
        p = estimate_prefill(s, reuse[s], counts, consts) if p is None else float(p)
        scored = min(counts.prompt.get("summarize", consts["summarize"]), p) if s == "summarize" else 0.0
        _prefill(pre, col, s, sp, p, scored, counts.options, layers)
        dec[col[f"dec_{s}"]] = 1.0
        dec[col["fresh"]] = 1.0 if s != "recall" and not reuse[s] else 0.0
        drafting = counts.drafting.get(s) if sp.draft is not None else None
        if drafting:  # drafted steps under the draft's skips, verify steps dense
            d, v = float(drafting.get("drafted", 0)), float(drafting.get("verify_steps", 0))
            da, df = _executed(sp.draft.plan.decode, layers)
            parts = [(d, da, df), (v, float(layers), float(layers))]
            dec[col["verify"]] = d
        else:
            a, f = _decode_counts(sp, g / rows, layers, attn_share, counts.cost_fraction.get(s), rows)
            parts = [(g, a, f)]
            if sp.dynamic_ffn is not None:  # the rule's own work: similarities, then row selection
                dec[col["dynamic"]] = g / rows * len(sp.dynamic_ffn.candidates) / layers
        for n, a, f in parts:
            step, extra = n / rows, n - n / rows
            for name, x in (("step", step), ("row", extra)):
                dec[col[name]] += x
                dec[col[f"{name}_attn"]] += x * a / layers
                dec[col[f"{name}_ffn"]] += x * f / layers
            dec[col["ctx"]] += step * a / layers * (context + g / (2 * rows)) / CTX_UNIT
        dec[col["exit"]] = g if s in exits else 0.0
        context += g
    return out
