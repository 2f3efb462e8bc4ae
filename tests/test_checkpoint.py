"""Resumable runs: finished batches and timed questions come back after an interruption."""
from __future__ import annotations

import math

import pytest
from tiny_reasoner import QUESTIONS, reasoner

from litestage_bench.engine.plan import SkipPlan
from litestage_bench.evaluation.checkpoint import RunCheckpoint
from litestage_bench.evaluation.runner import evaluate_items, time_items
from litestage_bench.records.results import ItemResult


def _item(i: str, latency: float = math.nan) -> ItemResult:
    return ItemResult(id=i, answer="A", prediction="B", rule="cloze", correct=False, latency_s=latency,
                      stage_latency_s={}, tokens={"recall": 3}, outputs={"recall": "x"},
                      predictions_by_rule={"cloze": "B"}, option_scores={"cloze": [-1.0, -0.5]},
                      executed_cost_fraction={"recall": 1.0})


def test_entries_come_back_and_another_run_starts_afresh(tmp_path):
    path = tmp_path / "r.json.partial.jsonl"
    cp = RunCheckpoint(path, {"model": "m", "items": ["a", "b"]})
    cp.put("batch", "a,b", [_item("a"), _item("b")])
    cp.put("timed", "a", [_item("a", 1.5)])
    again = RunCheckpoint(path, {"model": "m", "items": ["a", "b"]})
    assert again.resumed == 2 and again.count("timed") == 1
    assert [it.id for it in again.get("batch", "a,b")] == ["a", "b"]
    assert again.get("timed", "a")[0].latency_s == 1.5
    assert math.isnan(again.get("batch", "a,b")[0].latency_s)
    other = RunCheckpoint(path, {"model": "m", "items": ["a"]})
    assert other.resumed == 0
    assert RunCheckpoint(path, {"model": "m", "items": ["a", "b"]}).resumed == 0  # overwritten by `other`


def test_a_line_cut_off_by_a_kill_is_dropped(tmp_path):
    path = tmp_path / "r.partial.jsonl"
    cp = RunCheckpoint(path, {"k": 1})
    cp.put("batch", "a", [_item("a")])
    with open(path, "a") as fh:
        fh.write('{"phase": "batch", "key": "b", "items": [{"id": "b", "answ')  # killed mid-write
    cp = RunCheckpoint(path, {"k": 1})
    assert cp.resumed == 1
    cp.put("batch", "c", [_item("c")])
    assert sorted(k for _, k in RunCheckpoint(path, {"k": 1}).entries) == ["a", "c"]


@pytest.fixture(scope="module")
def tiny(model, tokenizer):
    return reasoner(model, tokenizer)


def test_runner_resumes_batches_and_timed_questions(tiny, tmp_path, monkeypatch):
    path = tmp_path / "run.partial.jsonl"
    cp = RunCheckpoint(path, {"run": 1})
    first = evaluate_items(tiny, SkipPlan(), {}, QUESTIONS, batch_size=2, progress=False, checkpoint=cp)
    timed = time_items(tiny, {"m": (SkipPlan(), {})}, QUESTIONS[:2], warmup=0, progress=False, checkpoint=cp)
    # a resumed run computes nothing that was finished
    monkeypatch.setattr(tiny, "solve_batch", lambda *a, **k: pytest.fail("batch recomputed"))
    monkeypatch.setattr(tiny, "solve", lambda *a, **k: pytest.fail("question re-timed"))
    cp = RunCheckpoint(path, {"run": 1})
    again = evaluate_items(tiny, SkipPlan(), {}, QUESTIONS, batch_size=2, progress=False, checkpoint=cp)
    again_timed = time_items(tiny, {"m": (SkipPlan(), {})}, QUESTIONS[:2], warmup=0, progress=False, checkpoint=cp)
    assert [r.outputs for r in again] == [r.outputs for r in first]
    assert [r.latency_s for r in again_timed["m"]] == [r.latency_s for r in timed["m"]]


def test_progress_of_a_resumed_run_counts_seconds_only_over_questions_solved_now(tiny, tmp_path, monkeypatch, capsys):
    from litestage_bench.evaluation import runner

    monkeypatch.setattr(runner.time, "perf_counter", lambda: 30.0)
    runner._progress("run", 20, 40, [], 0.0, solved=10)  # 10 read back, 10 solved in 30 s
    assert "20/40 acc=0.000 3.00 s/question, eta 1.0 min" in capsys.readouterr().err
    monkeypatch.undo()
    cp = RunCheckpoint(tmp_path / "run.partial.jsonl", {"run": 1})
    evaluate_items(tiny, SkipPlan(), {}, QUESTIONS, batch_size=2, progress=False, checkpoint=cp)
    evaluate_items(tiny, SkipPlan(), {}, QUESTIONS, batch_size=2, checkpoint=RunCheckpoint(cp.path, {"run": 1}))
    assert "(read back from the checkpoint)" in capsys.readouterr().err
