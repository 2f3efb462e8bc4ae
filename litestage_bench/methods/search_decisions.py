"""The LiteStage search's target tests over interim looks: each candidate's decision, when it stops,
and the power the procedure has.

A candidate's calibration items come in `looks` chunks (``look_ends``). After each chunk but the
last its test is computed on the items so far (``look_test``): a candidate that *clearly misses*
(upper bound below the bar) stops there (futility); one whose lower bound already passes stops as
*meets* (efficacy). An interim futility stop uses its own, lower confidence (``futility``, SearchOptions.
futility_confidence): the upper bound at that confidence below the bar stops a candidate that is
unlikely to meet at the last look (a curtailment), not only one that is already sure to miss.
Futility stops can only lower the chance of a "meets", whatever their confidence: they cost power
(``target_power`` computes it with them), never the stated confidence. Efficacy stops raise it,
so the chance of a false "meets" is spent over the looks (``look_plan``): a share
``efficacy_share`` of alpha = 1 - confidence split evenly over the interim looks, the rest at the
last look. By the union bound the chance that a candidate truly below the bar meets at some look
stays <= alpha: every "meets" keeps the stated confidence. Even spending rather than an
O'Brien-Fleming-like one: the interim looks are few (3 by default) and each already needs a stricter
bound than the last look on fewer items, so the share alone sets the trade-off.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from ..engine.plan import STAGES
from ..records import stats


def decide(target: dict, m: dict, confidence: float, meets_confidence: float | None = None) -> dict:
    """The target test of one candidate, paired against dense on the same calibration items.

    Accuracy: non-inferiority of (candidate - dense) accuracy within the tolerance; agreement: the
    answer agreement with dense at or above the minimum. Each with one-sided bounds
    (stats.paired_difference_bounds, stats.proportion_bounds): the upper at `confidence`, the lower at
    `meets_confidence` (default `confidence`; stricter at an interim look, see the module).
    "meets": the lower bound passes; "clearly misses": the upper bound fails too; "undecided": neither."""
    n = m["flips"]["n"]
    meets_confidence = meets_confidence or confidence

    def bounds(conf: float) -> tuple[float, float, float]:
        if target["kind"] == "accuracy":
            return stats.paired_difference_bounds(m["flips"]["wrong_to_correct"], m["flips"]["correct_to_wrong"],
                                                  n, conf)
        return stats.proportion_bounds(round(m["agreement"] * n), n, conf)
    est, _, high = bounds(confidence)
    low = bounds(meets_confidence)[1]
    bar = -target["tolerance_points"] / 100 if target["kind"] == "accuracy" else target["min_agreement"]
    decision = "meets" if low >= bar - 1e-12 else ("clearly misses" if high < bar - 1e-12 else "undecided")
    return {"statistic": "accuracy difference" if target["kind"] == "accuracy" else "agreement",
            "estimate": est, "lower": low, "upper": high, "bar": bar, "confidence": confidence,
            "meets_confidence": meets_confidence, "n": n, "decision": decision}


def look_ends(n: int, looks: int, batch: int) -> list[int]:
    """Where the calibration items are cut for the interim looks: `looks` near-equal chunks ending on
    whole batches (no part-filled batch inside a chunk), the last one at n."""
    interim = {min(n, max(batch, round(n * i / looks / batch) * batch)) for i in range(1, looks)}
    return sorted(e for e in interim if e < n) + [n]


@dataclass(frozen=True)
class LookPlan:
    """The looks of one search and the confidence each decision uses."""

    ends: tuple[int, ...]  # item counts at the looks, the last one all items
    confidence: float  # the stated confidence: every upper bound (clear misses)
    efficacy: float | None  # the lower bound's at an interim look (None: no efficacy stops)
    final: float  # the lower bound's at the last look
    futility: float | None = None  # the upper bound's at an interim look (None: `confidence`)

    def to_dict(self) -> dict:
        return {**asdict(self), "ends": list(self.ends)}


def spending(confidence: float, share: float, interim: int) -> tuple[float | None, float]:
    """(interim efficacy confidence, last look's confidence): alpha * share split evenly over the
    `interim` looks, alpha * (1 - share) at the last; no spending without interim looks or share."""
    alpha = 1 - confidence
    if interim == 0 or share <= 0:
        return None, confidence
    return 1 - share * alpha / interim, 1 - (1 - share) * alpha


def look_plan(n: int, opts: Any) -> LookPlan:
    """The LookPlan of `n` calibration items under SearchOptions `opts`."""
    ends = look_ends(n, opts.looks, opts.batch_size)
    efficacy, final = spending(opts.confidence, opts.efficacy_share, len(ends) - 1)
    return LookPlan(tuple(ends), opts.confidence, efficacy, final, opts.futility_confidence)


def look_test(target: dict, answers: dict, look: int, plan: LookPlan) -> tuple[dict, str | None]:
    """The test after look `look` (0-based) on the answers so far, and why the candidate stops
    there: "futility" (clearly misses), "efficacy" (meets at the interim confidence), "all items"
    (the last look); None: it goes on."""
    if look == len(plan.ends) - 1:
        return decide(target, answers, plan.confidence, plan.final), "all items"
    t = decide(target, answers, plan.futility or plan.confidence, plan.efficacy)
    if t["decision"] == "clearly misses":
        return t, "futility"
    if t["decision"] == "meets" and plan.efficacy is not None:
        return t, "efficacy"
    return t, None


def run_looks(target: dict | None, plan: LookPlan, chunk: Callable[[int, int], dict | None],
              slower: Callable[[list[dict]], bool] | None = None) -> tuple[dict, list[dict], dict, dict]:
    """A candidate measured look by look: `chunk(lo, hi)` gives the answer counts of calibration
    items lo..hi (CandidateMeter._answer_counts, a row read back, or None where there is none), and
    the candidate stops at the first look where `look_test` says so (the reference, target None,
    at the last), or at an interim look where `slower(chunks so far)` says it cannot be the fastest
    qualifying candidate of its sweep (decision "slower", why "slower": it can no longer be chosen,
    so, like a futility stop, this only lowers the chance of a "meets"). Returns its answers merged
    over the chunks, the chunks, its test and where it stopped ({"look", "of", "n", "why"}; why "no
    more rows" where a chunk is missing)."""
    parts: list[dict] = []
    answers, t, start = {}, {"decision": "reference"}, 0
    for look, end in enumerate(plan.ends):
        part = chunk(start, end)
        if part is None:
            return answers, parts, t, {"look": look, "of": len(plan.ends), "n": start, "why": "no more rows"}
        parts.append(part)
        answers, start = merge_answer_counts(parts), end
        if target is None:
            why = "all items" if end == plan.ends[-1] else None
        else:
            t, why = look_test(target, answers, look, plan)
            if why is None and slower is not None and slower(parts):
                t, why = {**t, "decision": "slower"}, "slower"
        if why is not None:
            return answers, parts, t, {"look": look + 1, "of": len(plan.ends), "n": end, "why": why}
    raise AssertionError("the last look always stops")


def merge_answer_counts(parts: list[dict]) -> dict:
    """A candidate's answer fields over the chunks measured so far (CandidateMeter._answer_counts)."""
    n = sum(p["n"] for p in parts)

    def total(key: str) -> Any:
        return sum(p[key] for p in parts)

    def stage_means(key: str) -> dict[str, float]:
        return {s: sum(p[key][s] for p in parts) / n for s in STAGES}
    correct, kl_n = total("correct"), total("answer_kl_n")
    acc, ci = stats.accuracy_ci95_of_counts(correct, n)
    return {"accuracy": acc, "accuracy_ci95": ci, "agreement": (n - total("changed")) / n,
            "answer_kl": total("answer_kl_sum") / kl_n if kl_n else None,
            "flips": {**{k: total(k) for k in ("correct_to_wrong", "wrong_to_correct", "changed")}, "n": n},
            "tokens": {s: round(v, 2) for s, v in stage_means("token_sums").items()},
            "executed_cost_fraction": stage_means("cost_fraction_sums"), "stage_runs": total("stage_runs"),
            "stage_runs_derived": sum(p.get("stage_runs_derived", 0) for p in parts),  # rows made before lack it
            "answers_cpu": ", ".join(sorted({p["cpu"] for p in parts})), "answers_seconds": total("seconds"),
            # process CPU time (wall seconds grow with the machine's other load); rows made before lack it
            "answers_cpu_seconds": total("cpu_seconds") if all("cpu_seconds" in p for p in parts) else None}


def target_power(opts: Any, n: int) -> dict:
    """The power of the target test at `n` calibration items, with the search's looks (futility and
    efficacy stops, the spent confidences) and without them (one look at the stated confidence): for
    the accuracy target, when a candidate is as accurate as dense and flips the correctness of 5%,
    10% or 20% of items (normal approximation; the looks by scipy's multivariate normal); for the
    agreement target, when its true agreement is the minimum + 0.05 (or 0.97) (exact binomial)."""
    plan = look_plan(n, opts)
    looks = list(plan.ends[:-1])
    spent = {"n": n, "interim_looks": looks, "confidence": opts.confidence,
             "futility_confidence": plan.futility, "efficacy_confidence": plan.efficacy,
             "final_confidence": plan.final}
    futility = plan.futility or opts.confidence
    if opts.target == "accuracy":
        def power(d: float, at: list[int], stops: bool = True) -> float:
            return stats.noninferiority_power(n, opts.tolerance / 100, d, futility if stops else opts.confidence, at,
                                              efficacy=plan.efficacy if stops else None,
                                              final_confidence=plan.final if stops else None)
        return {**spent, "tolerance_points": opts.tolerance, "computed": "normal approximation, multivariate normal "
                "over the looks", "assuming": "equal accuracy; discordance = share of items whose correctness differs",
                "power_by_discordance": {str(d): power(d, looks) for d in (0.05, 0.1, 0.2)},
                "without_looks": {str(d): power(d, [], False) for d in (0.05, 0.1, 0.2)}}
    trues = sorted({min(opts.min_agreement + 0.05, 1.0), max(0.97, opts.min_agreement)})

    def agree_power(t: float, at: list[int], stops: bool = True) -> float:
        return stats.agreement_power(n, opts.min_agreement, t, futility if stops else opts.confidence, at,
                                     efficacy=plan.efficacy if stops else None,
                                     final_confidence=plan.final if stops else None)
    return {**spent, "min_agreement": opts.min_agreement, "computed": "exact binomial over the looks",
            "power_by_true_agreement": {f"{t:g}": agree_power(t, looks) for t in trues},
            "without_looks": {f"{t:g}": agree_power(t, [], False) for t in trues}}
