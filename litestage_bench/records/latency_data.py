"""Timed result records as latency-model data: per timed item the counts of both sides (method and
dense) and the method's measured seconds per stage and part; per record what it says of dense.

Committed records keep the method's per-round seconds of every timed item but not dense's (records
made after `timing["dense_rounds"]` was added keep both). Dense's side otherwise comes as geometric
means over the timed items, per stage: its seconds (speedup_decomposition[stage].speedup x the
method's), its prefill seconds (x prefill_share_dense) and the whole question's. Dense's generated
tokens per item are in each item's fidelity; its prefill tokens are estimated (estimate_prefill).
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.plan import STAGES, StagePlan
from .items import ItemResult
from .latency_features import ItemCounts, plan_of_policy, reuse_flags
from .results import ResultRecord, record_from_dict
from .timing import rounds_of


@dataclass
class TimedItem:
    """One timed question: both sides' counts and what was measured."""

    method: ItemCounts
    dense: ItemCounts
    seconds: list[list[float]]  # [stage][part] the method's mean over rounds (prefill, rest)
    log_stage: list[float]  # per stage the method's mean over rounds of log seconds
    log_total: float
    dense_seconds: list[list[float]] | None = None  # when the record keeps dense's rounds


@dataclass
class RecordData:
    """One record's timed questions and dense's geometric means."""

    path: str
    record: ResultRecord
    items: list[TimedItem] = field(default_factory=list)
    # dense's mean log seconds over the timed items: {("stage", s) | ("prefill", s) | ("total", None): value}
    dense_targets: dict = field(default_factory=dict)


def group_key(rec: ResultRecord) -> tuple[str, str, str, str]:
    """(model, numerics, device, cpu): one latency fit each."""
    return (rec.model, str(rec.numerics or rec.dtype), str(rec.device or "cpu"), str(rec.machine.get("cpu", "?")))


def timed_records(root: str | Path) -> list[tuple[str, ResultRecord]]:
    """Every non-dense record under `root` timed in interleaved rounds (path relative to `root`'s
    parent), each batch-1 timing once: a copy that keeps another record's (re-scored by another
    answer rule, or re-timed at batch B beside it) is left out for its source."""
    root = Path(root)
    found = []
    for path in sorted(root.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not (isinstance(data, dict) and "schema_version" in data and isinstance(data.get("items"), list)):
            continue
        timing = data.get("timing") or {}
        if not timing.get("rounds") or data.get("method") == "dense":
            continue
        copy = bool((data.get("extra") or {}).get("rescored") or timing.get("throughput"))
        found.append((copy, path, data))
    out, seen = [], set()
    for copy, path, data in sorted(found, key=lambda f: f[:2]):  # sources first, then copies
        timing = data["timing"]
        measured = (data.get("model"), data.get("benchmark"), data.get("method"), data.get("speedup"),
                    json.dumps(timing.get("speedup_rounds")), json.dumps(timing.get("timed_ids")))
        if measured in seen:
            continue
        seen.add(measured)
        out.append((path.relative_to(root.parent).as_posix(), record_from_dict(data, str(path))))
    return sorted(out)


def _static(sp: StagePlan) -> bool:
    return sp.prefill == sp.decode and not sp.schedule and sp.dynamic_ffn is None and sp.draft is None


def model_facts(records: list[ResultRecord]) -> dict[str, dict]:
    """Per model: its layer count (from static whole-layer plans: skipped / (1 - executed fraction))
    and the attention share of a layer's FLOPs (from static plans that skip attention and FFN apart)."""
    found: dict[str, dict] = {}
    for rec in records:
        plan, _ = plan_of_policy(rec.policy)
        for s in STAGES:
            sp, f = plan.for_stage(s), rec.executed_cost_fraction.get(s)
            if _static(sp) and sp.decode and f is not None and f < 1:
                entry = found.setdefault(rec.model, {"L": [], "split": []})
                if sp.decode.attn == sp.decode.ffn:
                    entry["L"].append(len(sp.decode.attn) / (1 - f))
                else:
                    entry["split"].append((len(sp.decode.attn), len(sp.decode.ffn), f))
    facts = {}
    for model, entry in found.items():
        if not entry["L"]:
            continue
        layers = int(round(statistics.median(entry["L"])))
        num = sum((a - b) * ((1 - f) * layers - b) for a, b, f in entry["split"])
        den = sum((a - b) ** 2 for a, b, _ in entry["split"])
        facts[model] = {"num_layers": layers, "attn_share": num / den if den else None}
    return facts


def _options(item: ItemResult) -> int:
    return max((len(v) for v in item.option_scores.values()), default=1) or 1


def prompt_constants(records: list[ResultRecord]) -> dict[str, dict]:
    """Per benchmark, the prompt-token constants of estimate_prefill, from the timed items' counts:
    recall (median prompt), analyze (the part a reused cache does not hold), summarize (its fixed
    part, median) and summarize_extra (what re-prefilling from the header adds beyond the recall
    prompt and generation: the same question under both kinds of plans)."""
    per: dict[str, dict] = {}
    for rec in records:
        reuse = reuse_flags(plan_of_policy(rec.policy)[0], rec.config.get("reuse_kv", True))
        bench = per.setdefault(rec.benchmark, {"recall": [], "analyze": [], "kept": {}, "fresh": {}, "options": []})
        for it in rec.items:
            p, g = it.prefill_tokens, it.tokens
            if not p or not rounds_of(it):
                continue
            bench["recall"].append(p["recall"])
            bench["options"].append(_options(it))
            bench["analyze"].append(p["analyze"] - (0 if reuse["analyze"] else p["recall"] + g["recall"]))
            if reuse["summarize"]:
                bench["kept"].setdefault(it.id, []).append(p["summarize"] - g["analyze"])
            else:
                bench["fresh"].setdefault(it.id, []).append(p["summarize"] - g["analyze"] - p["recall"] - g["recall"])
    out = {}
    for name, b in per.items():
        both = [statistics.mean(b["fresh"][i]) - statistics.mean(b["kept"][i]) for i in b["kept"] if i in b["fresh"]]
        extra = statistics.median(both) if both else 0.0
        fixed = [x for v in b["kept"].values() for x in v] + [x - extra for v in b["fresh"].values() for x in v]
        out[name] = {"recall": statistics.median(b["recall"]), "analyze": statistics.median(b["analyze"]),
                     "summarize": statistics.median(fixed), "summarize_extra": extra,
                     "options": int(statistics.median(b["options"]))}
    return out


def _split(rounds: list[dict]) -> list[list[float]]:
    pre = [[r.get("prefill_s", {}).get(s, 0.0) for r in rounds] for s in STAGES]
    return [[statistics.mean(pre[i]), statistics.mean(r["stage_s"][s] for r in rounds) - statistics.mean(pre[i])]
            for i, s in enumerate(STAGES)]


def dense_tokens_of(it: ItemResult) -> dict[str, int] | None:
    """Dense's generated tokens per stage on the same question, from the item's fidelity (None: not compared)."""
    stages = (it.fidelity or {}).get("stages") or {}
    if not all("dense_tokens" in stages.get(s, {}) for s in STAGES):
        return None
    return {s: stages[s]["dense_tokens"] for s in STAGES}


def item_counts(it: ItemResult, dense_tokens: dict, reuse: dict[str, bool],
                consts: dict) -> tuple[ItemCounts, ItemCounts]:
    """(method, dense) counts of one question. A timed item's prefill tokens give this question's
    own prompt constants (recall prompt; Summarize's fixed part), used for dense's side too; an
    untimed item (an accuracy pass) leaves both to the benchmark's constants."""
    p, g = it.prefill_tokens, it.tokens
    prompt = {}
    if p:
        kept = reuse["summarize"]
        fixed = p["summarize"] - g["analyze"] - (0 if kept else p["recall"] + g["recall"] + consts["summarize_extra"])
        prompt = {"recall": float(p["recall"]), "summarize": float(fixed)}
    method = ItemCounts(dict(g), dict(p), _options(it), {s: dict(v) for s, v in it.speculative.items()},
                        dict(it.executed_cost_fraction), prompt)
    return method, ItemCounts(dict(dense_tokens), {}, _options(it), prompt=prompt)


def record_data(path: str, rec: ResultRecord, consts: dict) -> RecordData | None:
    """A record's timed items and dense targets; None when its items lack dense's tokens or timings."""
    plan, _ = plan_of_policy(rec.policy)
    reuse = reuse_flags(plan, rec.config.get("reuse_kv", True))
    out = RecordData(path, rec)
    dense_rounds = (rec.timing or {}).get("dense_rounds") or {}
    for it in rec.items:
        rounds, dense_tokens = rounds_of(it), dense_tokens_of(it)
        if not rounds or not it.prefill_tokens or dense_tokens is None:
            continue
        method, dense = item_counts(it, dense_tokens, reuse, consts[rec.benchmark])
        log_stage = [statistics.mean(math.log(r["stage_s"][s]) for r in rounds) for s in STAGES]
        log_total = statistics.mean(math.log(sum(r["stage_s"].values())) for r in rounds)
        d = dense_rounds.get(it.id)
        out.items.append(TimedItem(method, dense, _split(rounds), log_stage, log_total, _split(d) if d else None))
    if not out.items:
        return None
    dec = rec.speedup_decomposition or {}
    n = len(out.items)
    for i, s in enumerate(STAGES):
        row = dec.get(s) or {}
        if row.get("speedup") and row.get("n_items") == n:
            stage = math.log(row["speedup"]) + sum(t.log_stage[i] for t in out.items) / n
            out.dense_targets[("stage", s)] = stage
            if row.get("prefill_share_dense"):
                out.dense_targets[("prefill", s)] = stage + math.log(row["prefill_share_dense"])
    if rec.speedup:
        out.dense_targets[("total", None)] = math.log(rec.speedup) + sum(t.log_total for t in out.items) / n
    return out
