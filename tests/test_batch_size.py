"""The batch-size study: the same items at each size, CPU per item, and the items whose answers move."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
from tiny_reasoner import QUESTIONS, reasoner

from litestage_bench.core.errors import UserError
from litestage_bench.studies import batch_size


def test_float32_answers_do_not_move_with_the_batch_size_and_each_size_is_timed(model, tokenizer):
    items = QUESTIONS * 2  # 6 items: full batches of 1, 2 and 3
    rows = batch_size.measure(reasoner(model, tokenizer), items, [2, 3, 1], rounds=2)
    assert [r["batch_size"] for r in rows] == [2, 3, 1] and rows[0]["cpu_ratio"] == 1.0
    assert all(r["cpu_s_per_item"] > 0 and r["wall_s_per_item"] > 0 for r in rows)
    assert all(r["answers_changed"] == r["outputs_changed"] == [] for r in rows)
    text = batch_size.render(rows, "tiny", "float32", "obqa", "cmd")
    assert "CPU / batch 2" in text and "`cmd`" in text


class _BatchDependent:
    """A reasoner whose answer to q1 depends on the batch it is solved in."""

    def solve_batch(self, chunk, plan, callbacks=None, memo=None):
        return [SimpleNamespace(id=q.id, correct=True, prediction="A" if len(chunk) > 1 and q.id == "q1" else "B",
                                outputs={"recall": f"{q.id} {len(chunk)}" if q.id == "q2" else q.id})
                for q in chunk]


def test_answers_and_outputs_that_move_with_the_batch_size_are_named():
    items = [replace(q, id=f"q{i + 1}") for i, q in enumerate(QUESTIONS)] + [replace(QUESTIONS[0], id="q4")]
    rows = batch_size.measure(_BatchDependent(), items, [1, 2], rounds=1)
    assert rows[0]["answers_changed"] == [] and rows[1]["answers_changed"] == ["q1"]
    assert rows[1]["outputs_changed"] == ["q2"]


def test_sizes_that_leave_a_part_filled_batch_are_refused(capsys, tmp_path):
    with pytest.raises(UserError, match="full batches"):
        batch_size.check_sizes([8, 16], 24)
    assert batch_size.main(["--items", "10", "--batch-sizes", "8,16", "--out", str(tmp_path / "t.md")]) == 2
    assert "full batches" in capsys.readouterr().err and not (tmp_path / "t.md").exists()
    assert batch_size.main(["--batch-sizes", "8,x"]) == 2


def test_a_static_plans_outputs_and_per_item_costs_do_not_move_with_the_batch(model, tokenizer):
    """What lets a timing group re-run a batch-16 record's batch at batch 8 (runner._check_batch_rerun)."""
    from tiny_reasoner import STAGEWISE, STATIC

    from litestage_bench.evaluation.runner import evaluate_items

    r = reasoner(model, tokenizer)
    items = QUESTIONS * 2
    for plan in (STATIC, STAGEWISE):
        one, three = (evaluate_items(r, plan, {}, items, b, progress=False) for b in (1, 3))
        assert [(x.outputs, x.prediction) for x in one] == [(y.outputs, y.prediction) for y in three]
        assert all(x.executed_cost_fraction == pytest.approx(y.executed_cost_fraction, abs=1e-12)
                   for x, y in zip(one, three))
        assert any(v < 1 for x in one for v in x.executed_cost_fraction.values())  # the plan skips something
