"""Fidelity to dense: how far a method's per-item results move from dense's on the same items.

Accuracy alone cannot tell a harmless plan from a destructive one when a small model sits near
chance: two plans can score the same while answering different questions right. So besides
accuracy we count answer flips, the agreement rate, KL(dense || method) of the answer distribution
over the options, per-stage output agreement (exact match, ROUGE-L F1) and per-stage token ratios
(Dutta et al. 2024, "Accuracy is Not All You Need", arXiv 2407.09141; method.md §5).

Aggregates use ``None`` (never ``nan``) for an undefined value, so they survive a JSON round trip.
"""
from __future__ import annotations

import functools
import math
import statistics
from typing import TYPE_CHECKING, Sequence

from ..core.errors import UserError
from ..engine.plan import STAGES

if TYPE_CHECKING:
    from .items import ItemResult

RULES = ("regex", "letter", "cloze", "regex+letter", "regex+cloze")


def check_rule(rule: str) -> str:
    """The rule itself when it is known, else a UserError naming the known ones."""
    if rule not in RULES:
        raise UserError(f"unknown answer rule '{rule}'", f"use one of: {', '.join(RULES)}")
    return rule


def decide(rule: str, predictions: dict[str, str | None]) -> tuple[str | None, str]:
    """Apply a rule (or chain) to the per-rule predictions: (prediction, deciding rule)."""
    for part in rule.split("+"):
        if predictions.get(part) is not None:
            return predictions[part], part
    return None, "none"


def answered_by(item: "ItemResult", rule: str) -> "ItemResult":
    """`item` answered by `rule` from its every-rule predictions (the same generations)."""
    from dataclasses import replace

    prediction, used = decide(rule, item.predictions_by_rule or {})
    return replace(item, prediction=prediction, rule=used, correct=prediction == item.answer)


def rule_hits(items: Sequence["ItemResult"]) -> dict[str, list[bool]]:
    """Per rule found among the items' every-rule predictions, whether each item's prediction under
    it is its gold answer."""
    rules = sorted({rule for it in items for rule in (it.predictions_by_rule or {})})
    return {rule: [(it.predictions_by_rule or {}).get(rule) == it.answer for it in items] for rule in rules}


def most_accurate_rule(items: Sequence["ItemResult"], own: str) -> str:
    """The rule with the most correct items; a tie keeps `own` (else the first tied by name)."""
    hits = rule_hits(items)
    best = max(sum(v) for v in hits.values())
    tied = sorted(rule for rule, v in hits.items() if sum(v) == best)
    return own if own in tied else tied[0]


def score_rule(answer_rule: str) -> str:
    """``"cloze"`` or ``"letter"``: whose ``option_scores`` stand for ``answer_rule``'s answer.

    A bare `regex` has no distribution of its own; the letter logits are the closest one."""
    return "cloze" if check_rule(answer_rule).endswith("cloze") else "letter"


def answer_kl(dense_scores: Sequence[float], method_scores: Sequence[float]) -> float:
    """KL(dense || method) in nats between softmax(scores) over the same options, in option order.

    Raises ``ValueError`` when the two lists are empty or of different lengths.
    """
    if len(dense_scores) != len(method_scores) or not dense_scores:
        raise ValueError(f"answer_kl needs scores for the same options: {len(dense_scores)} vs {len(method_scores)}")
    import numpy as np
    from scipy.special import rel_entr, softmax

    p = softmax(np.asarray(dense_scores, dtype=float))
    q = softmax(np.asarray(method_scores, dtype=float))
    return float(np.sum(rel_entr(p, q)))


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(reference: str, candidate: str) -> float:
    """ROUGE-L F1 of ``candidate`` against ``reference``; identical strings give 1.0, even empty ones."""
    if reference == candidate:
        return 1.0  # the rouge_score package gives 0.0 for two empty (or token-free) strings
    return float(_rouge_scorer().score(reference, candidate)["rougeL"].fmeasure)


def _flip(dense_correct: bool, method_correct: bool) -> str | None:
    if dense_correct and not method_correct:
        return "correct_to_wrong"
    if method_correct and not dense_correct:
        return "wrong_to_correct"
    return None


def same_answer(a: ItemResult, b: ItemResult) -> bool:
    """Whether two runs gave the same answer to an item (``None``, no answer, counts as a value):
    the agreement of every comparison, with dense or between methods."""
    return a.prediction == b.prediction


def item_fidelity(dense: ItemResult, method: ItemResult, answer_rule: str) -> dict:
    """One item's comparison with dense.

    Keys: ``changed`` (the prediction differs; ``None`` counts as an answer value), ``identical``
    (unchanged, and every stage's text and token count equal), ``flip``
    (``"correct_to_wrong"``, ``"wrong_to_correct"`` or ``None``), ``answer_kl`` (``None`` when
    either side lacks option scores for ``score_rule(answer_rule)``), and ``stages``: per stage,
    ``exact_match`` (bool), ``rouge_l`` (F1), ``dense_tokens`` and ``method_tokens``.
    """
    rule = score_rule(answer_rule)
    d_scores, m_scores = dense.option_scores.get(rule), method.option_scores.get(rule)
    kl = answer_kl(d_scores, m_scores) if d_scores and m_scores else None
    stages = {}
    for s in STAGES:
        if not any(s in d for d in (dense.outputs, method.outputs, dense.tokens, method.tokens)):
            continue
        d_text, m_text = dense.outputs.get(s, ""), method.outputs.get(s, "")
        stages[s] = {
            "exact_match": d_text == m_text,
            "rouge_l": rouge_l(d_text, m_text),
            "dense_tokens": int(dense.tokens.get(s, 0)),
            "method_tokens": int(method.tokens.get(s, 0)),
        }
    changed = not same_answer(dense, method)
    return {
        "changed": changed,
        # token-identical generations (equal texts and token counts in every stage) and the same answer
        "identical": not changed and all(r["exact_match"] and r["dense_tokens"] == r["method_tokens"]
                                         for r in stages.values()),
        "flip": _flip(bool(dense.correct), bool(method.correct)),
        "answer_kl": kl,
        "stages": stages,
    }


def pair_items(dense_items: Sequence[ItemResult], method_items: Sequence[ItemResult]) -> list[tuple[ItemResult, ItemResult]]:
    """``(dense, method)`` pairs matched by item id, in the method's order.

    Raises ``UserError`` when the id sets differ (the two runs did not see the same items).
    """
    dense = {it.id: it for it in dense_items}
    method_ids = [it.id for it in method_items]
    if dense.keys() != set(method_ids) or len(dense) != len(dense_items) or len(method_ids) != len(set(method_ids)):
        missing = sorted(dense.keys() - set(method_ids))[:3]
        extra = sorted(set(method_ids) - dense.keys())[:3]
        raise UserError(
            f"dense and method results are not on the same items ({len(dense_items)} dense, "
            f"{len(method_items)} method; only in dense: {missing or '-'}, only in method: {extra or '-'})",
            "run dense and the method with the same --bench, --split, --limit and --seed",
        )
    return [(dense[it.id], it) for it in method_items]


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def combine_fidelity(per_item: Sequence[dict]) -> dict:
    """Aggregate ``item_fidelity`` dicts (see ``aggregate_fidelity`` for the keys)."""
    n = len(per_item)
    kls = [f["answer_kl"] for f in per_item if f["answer_kl"] is not None and math.isfinite(f["answer_kl"])]
    changed = sum(1 for f in per_item if f["changed"])
    stages = [s for s in STAGES if any(s in f["stages"] for f in per_item)]

    def stage_rows(s: str) -> list[dict]:
        return [f["stages"][s] for f in per_item if s in f["stages"]]

    def ratio(s: str) -> float | None:
        dense = sum(r["dense_tokens"] for r in stage_rows(s))
        return sum(r["method_tokens"] for r in stage_rows(s)) / dense if dense else None

    return {
        "n": n,
        "correct_to_wrong": sum(1 for f in per_item if f["flip"] == "correct_to_wrong"),
        "wrong_to_correct": sum(1 for f in per_item if f["flip"] == "wrong_to_correct"),
        "changed": changed,
        "agreement": (n - changed) / n if n else None,
        "identical_outputs": sum(1 for f in per_item if f.get("identical")),
        "answer_kl": _mean(kls),
        "answer_kl_median": float(statistics.median(kls)) if kls else None,
        "answer_kl_n": len(kls),
        "stage_exact_match": {s: _mean([1.0 if r["exact_match"] else 0.0 for r in stage_rows(s)]) for s in stages},
        "stage_rouge_l": {s: _mean([r["rouge_l"] for r in stage_rows(s)]) for s in stages},
        "token_ratio": {s: ratio(s) for s in stages},
    }


def aggregate_fidelity(dense_items: Sequence[ItemResult], method_items: Sequence[ItemResult], answer_rule: str) -> dict:
    """Fidelity of a method's items to dense's, matched by id (``UserError`` if the ids differ).

    Keys: ``n``; counts ``correct_to_wrong``, ``wrong_to_correct``, ``changed``, ``identical_outputs``
    (items whose every stage output equals dense's); ``agreement`` (rate
    of unchanged answers); ``answer_kl`` (mean over the ``answer_kl_n`` items with scores) and
    ``answer_kl_median``; ``stage_exact_match`` {stage: rate}; ``stage_rouge_l`` {stage: mean F1};
    ``token_ratio`` {stage: sum(method tokens) / sum(dense tokens), ``None`` when dense has 0}.
    """
    pairs = pair_items(dense_items, method_items)
    return combine_fidelity([item_fidelity(d, m, answer_rule) for d, m in pairs])


def retention(accuracy: float | None, dense_accuracy: float | None, chance: float | None) -> float | None:
    """Chance-normalised accuracy retention ``(acc - chance) / (dense - chance)``.

    ``None`` when an input is missing or ``nan``, or dense is not above chance (nothing to retain).
    """
    vals = (accuracy, dense_accuracy, chance)
    if any(v is None or not math.isfinite(v) for v in vals):
        return None
    if dense_accuracy <= chance:
        return None
    return (accuracy - chance) / (dense_accuracy - chance)
