"""Fast tests for litestage_bench.records.fidelity on constructed item results (no models)."""
from __future__ import annotations

import dataclasses
import math

import pytest

from litestage_bench.core.errors import UserError
from litestage_bench.records import fidelity
from litestage_bench.records.results import ItemResult


def item(i: int, prediction: str | None, answer: str = "A", **kw) -> ItemResult:
    base = dict(
        id=f"q{i}", answer=answer, prediction=prediction, rule="cloze", correct=prediction == answer,
        latency_s=1.0, stage_latency_s={"recall": 0.5, "analyze": 0.3, "summarize": 0.2},
        tokens={"recall": 10, "analyze": 20, "summarize": 5},
        outputs={"recall": "the sun is a star", "analyze": "option A fits", "summarize": "so the answer is A"},
        option_scores={"cloze": [-1.0, -2.0, -3.0], "letter": [2.0, 1.0, 0.0]},
    )
    base.update(kw)
    return ItemResult(**base)


def dense_items() -> list[ItemResult]:
    return [item(0, "A"), item(1, "B"), item(2, "A"), item(3, None)]


def test_score_rule():
    assert fidelity.score_rule("cloze") == fidelity.score_rule("regex+cloze") == "cloze"
    assert fidelity.score_rule("letter") == fidelity.score_rule("regex+letter") == fidelity.score_rule("regex") == "letter"
    with pytest.raises(UserError):
        fidelity.score_rule("vibes")


def test_identical_records_agree_fully():
    dense = dense_items()
    method = [dataclasses.replace(it) for it in dense]
    agg = fidelity.aggregate_fidelity(dense, method, "cloze")
    assert agg["n"] == 4
    assert agg["correct_to_wrong"] == agg["wrong_to_correct"] == agg["changed"] == 0
    assert agg["agreement"] == 1.0
    assert agg["answer_kl"] == 0.0 and agg["answer_kl_median"] == 0.0 and agg["answer_kl_n"] == 4
    assert agg["stage_exact_match"] == {"recall": 1.0, "analyze": 1.0, "summarize": 1.0}
    assert agg["stage_rouge_l"] == {"recall": 1.0, "analyze": 1.0, "summarize": 1.0}
    assert agg["token_ratio"] == {"recall": 1.0, "analyze": 1.0, "summarize": 1.0}


def test_swapped_predictions_are_counted_exactly():
    dense = dense_items()
    # q0 right -> wrong, q1 wrong -> right, q3 no answer -> a wrong answer (changed, no flip)
    method = [item(0, "C"), item(1, "A"), item(2, "A"), item(3, "B")]
    agg = fidelity.aggregate_fidelity(dense, method, "letter")
    assert agg["correct_to_wrong"] == 1 and agg["wrong_to_correct"] == 1
    assert agg["changed"] == 3 and agg["agreement"] == pytest.approx(1 / 4)
    per = [fidelity.item_fidelity(d, m, "letter") for d, m in zip(dense, method)]
    assert [f["flip"] for f in per] == ["correct_to_wrong", "wrong_to_correct", None, None]
    assert [f["changed"] for f in per] == [True, True, False, True]


def test_answer_kl_matches_an_independent_computation():
    # softmax([0, ln 2]) = [1/3, 2/3]; softmax([0, 0]) = [1/2, 1/2]
    expected = (1 / 3) * math.log((1 / 3) / (1 / 2)) + (2 / 3) * math.log((2 / 3) / (1 / 2))
    assert fidelity.answer_kl([0.0, math.log(2)], [0.0, 0.0]) == pytest.approx(expected, rel=1e-12)
    assert fidelity.answer_kl([5.0, 1.0], [5.0, 1.0]) == 0.0
    assert fidelity.answer_kl([1.0, 2.0], [11.0, 12.0]) == pytest.approx(0.0, abs=1e-12)  # shift-invariant
    with pytest.raises(ValueError):
        fidelity.answer_kl([1.0], [1.0, 2.0])


def test_item_fidelity_kl_uses_the_rule_scores_and_none_without_them():
    d = item(0, "A", option_scores={"cloze": [0.0, math.log(2)], "letter": [0.0, 0.0]})
    m = item(0, "A", option_scores={"cloze": [0.0, 0.0], "letter": [0.0, 0.0]})
    assert fidelity.item_fidelity(d, m, "regex+cloze")["answer_kl"] > 0
    assert fidelity.item_fidelity(d, m, "letter")["answer_kl"] == 0.0
    bare = item(0, "A", option_scores={})
    assert fidelity.item_fidelity(d, bare, "cloze")["answer_kl"] is None
    agg = fidelity.aggregate_fidelity([d], [bare], "cloze")
    assert agg["answer_kl"] is None and agg["answer_kl_median"] is None and agg["answer_kl_n"] == 0


def test_stage_agreement_rouge_and_token_ratio():
    d = item(0, "A", outputs={"recall": "a b c d", "analyze": "", "summarize": "x"},
             tokens={"recall": 4, "analyze": 0, "summarize": 2})
    m = item(0, "A", outputs={"recall": "a b c e", "analyze": "", "summarize": "x"},
             tokens={"recall": 2, "analyze": 3, "summarize": 2})
    f = fidelity.item_fidelity(d, m, "cloze")
    assert f["stages"]["recall"] == {"exact_match": False, "rouge_l": pytest.approx(0.75),
                                     "dense_tokens": 4, "method_tokens": 2}  # LCS 3 of 4 tokens
    assert f["stages"]["analyze"]["exact_match"] and f["stages"]["analyze"]["rouge_l"] == 1.0  # both empty
    agg = fidelity.aggregate_fidelity([d], [m], "cloze")
    assert agg["token_ratio"] == {"recall": 0.5, "analyze": None, "summarize": 1.0}
    assert agg["stage_exact_match"]["recall"] == 0.0 and agg["stage_rouge_l"]["recall"] == pytest.approx(0.75)


def test_items_are_matched_by_id_not_position():
    dense = dense_items()
    method = list(reversed([dataclasses.replace(it) for it in dense]))
    assert fidelity.aggregate_fidelity(dense, method, "cloze")["changed"] == 0


@pytest.mark.parametrize("method_ids", [[0, 1, 2], [0, 1, 2, 3, 4], [0, 1, 2, 9], [0, 1, 2, 2]])
def test_mismatched_ids_are_a_user_error(method_ids):
    with pytest.raises(UserError, match="same items"):
        fidelity.aggregate_fidelity(dense_items(), [item(i, "A") for i in method_ids], "cloze")


def test_empty_aggregate():
    agg = fidelity.aggregate_fidelity([], [], "cloze")
    assert agg["n"] == 0 and agg["agreement"] is None and agg["answer_kl"] is None


def test_retention():
    assert fidelity.retention(0.45, 0.5, 0.25) == pytest.approx(0.8)
    assert fidelity.retention(0.25, 0.5, 0.25) == 0.0
    assert fidelity.retention(0.4, 0.25, 0.25) is None  # dense at chance: nothing to retain
    assert fidelity.retention(0.4, 0.2, 0.25) is None
    assert fidelity.retention(0.4, 0.5, None) is None
    assert fidelity.retention(float("nan"), 0.5, 0.25) is None
