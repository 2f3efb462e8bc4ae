"""Resumable runs: finished batches and timed questions come back after an interruption."""
from __future__ import annotations

import math

import pytest
from tiny_reasoner import QUESTIONS, reasoner

from litestage_bench.engine.plan import SkipPlan
from litestage_bench.evaluation.checkpoint import RunCheckpoint
from litestage_bench.evaluation import runner
from litestage_bench.evaluation.runner import accuracy_cost, evaluate_items, time_items
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


def _session(numerics: str, source: str):
    from types import SimpleNamespace
    loaded = SimpleNamespace(spec=None, name="m", source=source, dtype="float32", numerics=numerics)
    return SimpleNamespace(loaded=loaded, executor=SimpleNamespace(device="cpu"))


def _fingerprint(session, threads: int, monkeypatch) -> str:
    from litestage_bench.evaluation.checkpoint import fingerprint
    from litestage_bench.evaluation.reasoner import ReasonerConfig
    from litestage_bench.evaluation.runner import checkpoint_config
    from litestage_bench.methods.registry import make_method
    monkeypatch.setattr("torch.get_num_threads", lambda: threads)
    return fingerprint(checkpoint_config(session, bench="obqa", split="eval", items=QUESTIONS, method=make_method("dense"),
                                         config=ReasonerConfig(), batch_size=8, timed=5, seed=0))


def test_exact_numerics_resume_on_any_thread_count_and_no_machine_path_decides(tmp_path, monkeypatch):
    """A float32 run's answers are the same on every thread count (noise floor 0), so a checkpoint
    made with 2 threads resumes with 1; bf16-matmul's are not, so there it starts afresh. The model
    is named by its weights, not by where this machine keeps them."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    exact = [_fingerprint(_session("float32", str(a)), n, monkeypatch) for n in (1, 2)]
    assert exact[0] == exact[1]
    assert _fingerprint(_session("bf16-matmul", str(a)), 1, monkeypatch) != _fingerprint(
        _session("bf16-matmul", str(a)), 2, monkeypatch)
    import os
    os.utime(a / "config.json", ns=(1, 1))
    os.utime(b / "config.json", ns=(1, 1))
    assert _fingerprint(_session("float32", str(a)), 1, monkeypatch) == _fingerprint(
        _session("float32", str(b)), 1, monkeypatch)


def test_timed_questions_of_another_machine_are_timed_again(tiny, tmp_path, monkeypatch):
    """`run` names its timed phase by device, CPU and threads: what another machine timed is re-timed."""
    path = tmp_path / "run.partial.jsonl"
    cp = RunCheckpoint(path, {"run": 1})
    time_items(tiny, {"m": (SkipPlan(), {})}, QUESTIONS[:2], warmup=0, progress=False, checkpoint=cp,
               phase="timed on cpu, CPU A, 1 threads")
    again = RunCheckpoint(path, {"run": 1})
    calls = []
    real = tiny.solve
    monkeypatch.setattr(tiny, "solve", lambda *a, **k: calls.append(1) or real(*a, **k))
    time_items(tiny, {"m": (SkipPlan(), {})}, QUESTIONS[:2], warmup=0, progress=False, checkpoint=again,
               phase="timed on cpu, CPU A, 1 threads")
    assert not calls
    time_items(tiny, {"m": (SkipPlan(), {})}, QUESTIONS[:2], warmup=0, progress=False, checkpoint=again,
               phase="timed on cpu, CPU B, 1 threads")
    assert len(calls) == 2 * 2  # both questions, in the default 2 rounds
    assert again.count("timed on cpu, CPU A, 1 threads") == again.count("timed on cpu, CPU B, 1 threads") == 2


def test_each_batch_keeps_its_seconds_and_cpu_and_the_cost_adds_up_per_cpu(tiny, tmp_path, monkeypatch):
    """A run's accuracy batches keep their seconds and CPU in the checkpoint, so that a record spanning
    machines says what its accuracy pass cost on each; a batch kept without them is counted apart."""
    path = tmp_path / "run.partial.jsonl"
    cp = RunCheckpoint(path, {"run": 1})
    cp.put("batch", "old", [_item("x")])  # kept before batches kept their cost
    monkeypatch.setattr(runner, "cpu_model", lambda: "CPU one")
    evaluate_items(tiny, SkipPlan(), {}, QUESTIONS[:2], batch_size=2, progress=False, checkpoint=cp)
    monkeypatch.setattr(runner, "cpu_model", lambda: "CPU two")
    cp = RunCheckpoint(path, {"run": 1})
    evaluate_items(tiny, SkipPlan(), {}, QUESTIONS, batch_size=2, progress=False, checkpoint=cp)
    cost = accuracy_cost(RunCheckpoint(path, {"run": 1}))
    assert {cpu: c["items"] for cpu, c in cost["per_cpu"].items()} == {"CPU one": 2, "CPU two": len(QUESTIONS) - 2}
    assert all(c["seconds"] > 0 for c in cost["per_cpu"].values()) and cost["items_without_cost"] == 1
