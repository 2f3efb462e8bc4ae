"""Interleaved speedups: dense and a method timed back to back on the same items for R rounds, the
speedup and its CI from the paired per-item ratios, and its decomposition into fewer tokens and
cheaper tokens.

Estimator. For item i and round r, ratio_ir = dense seconds / method seconds, both measured in the
same round, one right after the other (which one goes first alternates by item and round). The
speedup is the geometric mean over items of each item's geometric mean over rounds:
exp(mean_i mean_r log ratio_ir). A slowdown of the machine that lasts longer than one question hits
both sides of a pair alike and cancels in the ratio; a sequential estimate (all dense, then all
method) takes it at full size. The 95% CI is a Student t interval on the per-item mean log ratios,
exponentiated: exp(mean +/- t(0.975, n-1) sd / sqrt(n)); each item's mean carries its own
round-to-round variation, so the CI includes it. The percentile bootstrap that records carried
before is about the range of the items' ratios over so few items (the grid times 3) and covered a
true 1.00x in 68-71% of draws at 3 items; the t interval in 90-93%, 89-94% up to 20 items
(`python -m litestage_bench.studies.intervals --simulate`, results/intervals/coverage.md; heavy-tailed
timing noise keeps it a little under 95%). Below `MIN_CI_ITEMS` items, or with no spread across
items, no interval is given: (nan, nan) and the reason, which records keep in
`timing["speedup_ci95_refused"]` and reports print instead.
`speedup_rounds` gives each round's speedup over all items (the run-to-run spread that `compare`
uses as its speed tolerance).

Decomposition. For every pair, log speedup = log(dense tokens / method tokens) + log(dense seconds
per token / method seconds per token), with tokens = generated tokens (at least 1: the first is
always computed). Averaged over the same pairs, the geometric means multiply exactly:
speedup = token factor x per-token factor, per stage and for the whole question. Seconds per token
are also given apart for prefill (seconds of the multi-token forwards per prompt token) and decode
(the rest of the stage per generated token).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import replace
from typing import TYPE_CHECKING

from ..engine.plan import STAGES

if TYPE_CHECKING:  # results imports this module: no import at run time
    from .items import ItemResult

NAN = float("nan")
DEFAULT_ROUNDS = 2  # interleaved rounds per timed item of `run` and the grid: each side goes first once
# At 2 items the t interval has 1 degree of freedom (t = 12.7) and its width rests on one difference:
# drawn from recorded ratios it spans a factor of about 12 (high/low), against 2.4 at 3 items.
MIN_CI_ITEMS = 3
# A spread of per-item log ratios below this is rounding (identical timings), not measurement: a
# zero-width interval would claim certainty that no clock gives.
MIN_LOG_SPREAD = 1e-9
SPEEDUP_INTERVAL = "t on per-item log ratios, rounds averaged per item"


def merge_rounds(rounds: list[ItemResult], first: list[bool]) -> ItemResult:
    """One item's timed rounds as one result: the first round's answers and outputs, every round's
    stage seconds in `timing_rounds`, and the medians as `latency_s` / `stage_latency_s`."""
    entries = [{"stage_s": dict(r.stage_latency_s), "prefill_s": dict(r.prefill_s), "first": f}
               for r, f in zip(rounds, first)]
    stage_median = {s: statistics.median(e["stage_s"][s] for e in entries) for s in rounds[0].stage_latency_s}
    return replace(rounds[0], latency_s=statistics.median(r.latency_s for r in rounds), stage_latency_s=stage_median,
                   timing_rounds=entries)


def with_latencies(results: list[ItemResult], timed: list[ItemResult]) -> list[ItemResult]:
    """Copies of `results` whose timed items carry the timings measured at batch 1 (`timed`), the
    drafting seconds of lossless stages included (a batched pass shares a step among its rows)."""
    by_id = {r.id: r for r in timed}
    return [replace(r, latency_s=t.latency_s, stage_latency_s=dict(t.stage_latency_s), prefill_s=dict(t.prefill_s),
                    prefill_tokens=dict(t.prefill_tokens), timing_rounds=list(t.timing_rounds),
                    speculative=dict(t.speculative) if t.speculative else r.speculative)
            if (t := by_id.get(r.id)) is not None else r for r in results]


def rounds_of(item: ItemResult) -> list[dict]:
    """An item's timed rounds; an item timed once before rounds existed is one round."""
    if item.timing_rounds:
        return item.timing_rounds
    if item.stage_latency_s and math.isfinite(item.latency_s):
        return [{"stage_s": dict(item.stage_latency_s), "prefill_s": dict(item.prefill_s)}]
    return []


def _pairs(dense: list[ItemResult], method: list[ItemResult]) -> list[tuple[ItemResult, ItemResult, list]]:
    """(dense item, method item, [(dense round, method round)]) for the items timed on both sides."""
    out = []
    for d, m in zip(dense, method):
        rd, rm = rounds_of(d), rounds_of(m)
        if rd and rm:
            out.append((d, m, list(zip(rd, rm))))
    return out


def dense_rounds(dense: list[ItemResult], method: list[ItemResult]) -> dict[str, list[dict]]:
    """{item id: dense's rounds} of the items timed on both sides (the other half of each pair is the
    method item's own `timing_rounds`)."""
    return {d.id: rounds_of(d) for d, _, _ in _pairs(dense, method)}


def round_seconds(entry: dict, stage: str | None = None) -> float:
    """A timed round's seconds: its stage's, or (None) the whole question's."""
    return sum(entry["stage_s"].values()) if stage is None else float(entry["stage_s"].get(stage, NAN))


def _log_ratio(a: float, b: float) -> float | None:
    return math.log(a / b) if a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b) else None


def _item_means(values: list[list[float | None]]) -> list[float]:
    """Per item, the mean of its defined per-round values (items with none are dropped)."""
    means = []
    for per_round in values:
        defined = [v for v in per_round if v is not None]
        if defined:
            means.append(sum(defined) / len(defined))
    return means


def _gm(item_means: list[float]) -> float:
    return math.exp(sum(item_means) / len(item_means)) if item_means else NAN


def t_gm_ci95(item_means: list[float]) -> tuple[tuple[float, float], str | None]:
    """95% interval of exp(mean of per-item log ratios): scipy's Student t interval on the item means,
    exponentiated. ``((low, high), None)``, or ``((nan, nan), reason)`` when refused (below
    ``MIN_CI_ITEMS`` items, or no spread across them)."""
    n = len(item_means)
    if n < MIN_CI_ITEMS:
        return (NAN, NAN), f"{n} timed item{'' if n == 1 else 's'}, {MIN_CI_ITEMS} needed"
    sd = statistics.stdev(item_means)
    if sd < MIN_LOG_SPREAD:
        return (NAN, NAN), "no spread across items"
    from scipy.stats import t

    low, high = t.interval(0.95, n - 1, loc=statistics.fmean(item_means), scale=sd / math.sqrt(n))
    return (math.exp(float(low)), math.exp(float(high))), None


def round_pair_logs(round_pairs: list[list[tuple[dict, dict]]], stage: str | None = None) -> list[list[float | None]]:
    """Per item, each round's log(dense seconds / method seconds) (None where a side has no time)."""
    return [[_log_ratio(round_seconds(a, stage), round_seconds(b, stage)) for a, b in rounds] for rounds in round_pairs]


def speedup_of_logs(logs: list[list[float | None]]) -> dict:
    """The speedup, its 95% CI (and why none, in ``ci95_refused``), the number of items and rounds
    and each round's speedup, from per item per round log ratios (``round_pair_logs``)."""
    means = _item_means(logs)
    n_rounds = max((len(r) for r in logs), default=0)
    per_round = []
    for r in range(n_rounds):
        vals = [row[r] for row in logs if r < len(row) and row[r] is not None]
        per_round.append(_gm(vals))
    ci, refused = t_gm_ci95(means)
    return {"speedup": _gm(means), "ci95": ci, "ci95_refused": refused, "n_items": len(means),
            "rounds": n_rounds, "speedup_rounds": per_round}


def item_log_speedups(method_rounds: dict[str, list[dict]], dense_rounds: dict[str, list[dict]]) -> dict[str, float]:
    """Per timed item, the mean over its rounds of log(dense seconds / method seconds), each round's
    dense (a record's `timing["dense_rounds"]`) beside the method's of the same round (its item's
    `timing_rounds`): the values the record's speedup and CI are made of."""
    out = {}
    for item_id, rounds in method_rounds.items():
        means = _item_means(round_pair_logs([list(zip(dense_rounds.get(item_id, []), rounds))]))
        if means:
            out[item_id] = means[0]
    return out


def paired_speed_ratio(a: dict[str, float], b: dict[str, float]) -> dict | None:
    """a's speedup / b's from their per-item log speedups (``item_log_speedups``) on the items both
    timed: exp(mean of the per-item differences), its 95% Student t interval, the two-sided p of the
    paired t test and the item count; None below ``MIN_CI_ITEMS`` shared items. Each record's
    speedup is its own interleaved dense over its method, so machine drift between two runs cancels
    within each item before the difference is taken, and an item's length, which moves both
    speedups, cancels in the difference; two records timed against one dense share it exactly."""
    diffs = [a[i] - b[i] for i in a if i in b]
    n = len(diffs)
    if n < MIN_CI_ITEMS:
        return None
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(n)
    if se < MIN_LOG_SPREAD:  # every item's difference the same: the ratio is exact
        return {"ratio": math.exp(mean), "ci95": (math.exp(mean),) * 2, "p": 1.0 if mean == 0 else 0.0, "n": n}
    from scipy.stats import t

    low, high = t.interval(0.95, n - 1, loc=mean, scale=se)
    return {"ratio": math.exp(mean), "ci95": (math.exp(float(low)), math.exp(float(high))),
            "p": float(2 * t.sf(abs(mean / se), n - 1)), "n": n}


def paired_speedup(dense: list[ItemResult], method: list[ItemResult], stage: str | None = None) -> dict:
    """The interleaved speedup of `method` over `dense` (same items, same order) with its 95% CI,
    the number of rounds and each round's own speedup; of one stage's seconds when `stage` is given."""
    return speedup_of_logs(round_pair_logs([rounds for _, _, rounds in _pairs(dense, method)], stage))


def _factors(d: ItemResult, m: ItemResult, a: dict, b: dict, stage: str | None) -> dict[str, float | None]:
    """log factors of one pair (dense round a, method round b), for a stage or the whole question."""
    stages = STAGES if stage is None else (stage,)
    t_d, t_m = round_seconds(a, stage), round_seconds(b, stage)
    g_d = max(sum(d.tokens.get(s, 0) for s in stages), 1)
    g_m = max(sum(m.tokens.get(s, 0) for s in stages), 1)
    p_d = sum(a.get("prefill_s", {}).get(s, 0.0) for s in stages)
    p_m = sum(b.get("prefill_s", {}).get(s, 0.0) for s in stages)
    pt_d = sum(d.prefill_tokens.get(s, 0) for s in stages)
    pt_m = sum(m.prefill_tokens.get(s, 0) for s in stages)
    has_blocks = bool(a.get("prefill_s")) and bool(b.get("prefill_s"))
    return {
        "speedup": _log_ratio(t_d, t_m),
        "token_factor": _log_ratio(g_d, g_m),
        "per_token_factor": _log_ratio(t_d / g_d, t_m / g_m),
        "prefill_per_token_factor": _log_ratio(p_d / pt_d, p_m / pt_m) if has_blocks and pt_d and pt_m else None,
        "decode_per_token_factor": _log_ratio((t_d - p_d) / g_d, (t_m - p_m) / g_m) if has_blocks else None,
        "prefill_share_dense": math.log(p_d / t_d) if has_blocks and p_d > 0 and t_d > 0 else None,
        "prefill_share_method": math.log(p_m / t_m) if has_blocks and p_m > 0 and t_m > 0 else None,
    }


def decompose(dense: list[ItemResult], method: list[ItemResult]) -> dict[str, dict]:
    """Per stage and for the whole question ("total"): speedup = token_factor x per_token_factor
    (geometric means over the same pairs), with seconds per token for prefill and decode apart and
    the prefill share of each side's time (geometric means too). `generated_tokens` is each side's
    mean per item."""
    pairs = _pairs(dense, method)
    out: dict[str, dict] = {}
    for stage in (*STAGES, None):
        per_pair = [[_factors(d, m, a, b, stage) for a, b in rounds] for d, m, rounds in pairs]
        row: dict[str, float | int] = {}
        for key in ("speedup", "token_factor", "per_token_factor", "prefill_per_token_factor",
                    "decode_per_token_factor", "prefill_share_dense", "prefill_share_method"):
            value = _gm(_item_means([[f[key] for f in rounds] for rounds in per_pair]))
            row[key] = value if math.isfinite(value) else None  # None: not measured (JSON null)
        stages = STAGES if stage is None else (stage,)
        for side, items in (("dense", [d for d, _, _ in pairs]), ("method", [m for _, m, _ in pairs])):
            row[f"generated_tokens_{side}"] = (statistics.fmean(sum(it.tokens.get(s, 0) for s in stages)
                                                                for it in items) if items else None)
        row["n_items"] = len(pairs)
        out[stage or "total"] = row
    return out
