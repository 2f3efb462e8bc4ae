"""The noise floor's bookkeeping: comparisons of saved runs, and the cross-CPU variant's guard."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from litestage_bench.evaluation import runner
from litestage_bench.evaluation.benchmarks import Question
from litestage_bench.studies import noise_floor


def _item(i: int, prediction: str, recall: str = "r") -> dict:
    return {"id": f"q{i}", "answer": "A", "prediction": prediction, "by_rule": {"cloze": prediction},
            "outputs": {"recall": recall, "analyze": "a", "summarize": "s"}}


def _run(variant: str, items: list[dict], cpu: str | None = None) -> dict:
    run = {"model": "m", "dtype": "float32", "bench": "obqa", "variant": variant, "ids": [i["id"] for i in items],
           "command": "c", "items": items}
    return run if cpu is None else {**run, "cpu": cpu}


def test_comparison_row_counts_flips_and_names_both_cpus():
    ref = _run("reference", [_item(0, "A"), _item(1, "B"), _item(2, "C")])  # saved before runs kept their CPU
    other = _run("other_cpu", [_item(0, "A"), _item(1, "C"), _item(2, "C", recall="x")], cpu="Intel Xeon")
    row = noise_floor.comparison_row(ref, other)
    assert row["cpu"] == f"{noise_floor.LEGACY_RUN_CPU} / Intel Xeon"
    assert (row["n"], row["answer_flips"]) == (3, 1)
    assert row["identical_outputs"] == pytest.approx(2 / 3)  # q2 generated another recall
    assert row["identical_recall"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("reference_cpu, measured", [("Intel Xeon", False), ("AMD EPYC", True)])
def test_other_cpu_runs_only_against_a_reference_from_another_cpu(tmp_path, monkeypatch, reference_cpu, measured):
    questions = [Question(f"q{i}", "stem", ("x", "y"), ("A", "B"), "A") for i in range(2)]
    ref = _run("reference", [_item(0, "A"), _item(1, "B")], cpu=reference_cpu)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "m_float32_obqa_reference.json").write_text(json.dumps(ref))
    calls = []
    monkeypatch.setattr(runner.Session, "open", classmethod(lambda cls, model, numerics: SimpleNamespace()))
    monkeypatch.setattr(noise_floor, "load_split", lambda bench, split, limit: questions)
    monkeypatch.setattr(noise_floor, "machine_info", lambda: {"cpu": "Intel Xeon"})
    monkeypatch.setattr(noise_floor, "_run_variant",
                        lambda session, bench, variant, items: calls.append(variant) or [_item(0, "A"), _item(1, "A")])
    rows = noise_floor.measure("m", "float32", ["obqa"], 2, ["other_cpu"], tmp_path, "cmd")
    assert calls == (["other_cpu"] if measured else [])  # the reference is read back, never rerun
    assert (tmp_path / "runs" / "m_float32_obqa_other_cpu.json").exists() == measured
    if measured:
        (row,) = rows
        assert (row["cpu"], row["answer_flips"]) == ("AMD EPYC / Intel Xeon", 1)
        assert json.loads((tmp_path / "runs" / "m_float32_obqa_other_cpu.json").read_text())["cpu"] == "Intel Xeon"
    else:
        assert rows == []


def test_summary_compares_every_saved_run_afresh(tmp_path):
    """A summary written before runs recorded their CPU is rebuilt from the runs, CPU column included."""
    runs = tmp_path / "runs"
    runs.mkdir()
    ref, other = _run("reference", [_item(0, "A")]), _run("batched", [_item(0, "B")], cpu="Intel Xeon")
    for run in (ref, other):
        (runs / f"m_float32_obqa_{run['variant']}.json").write_text(json.dumps(run))
    stale = {k: v for k, v in noise_floor.comparison_row(ref, other).items() if k != "cpu"}
    (tmp_path / "noise_floor.json").write_text(json.dumps({"rows": [stale], "commands": ["old"]}))
    noise_floor.write_summary(tmp_path, "new")
    (row,) = json.loads((tmp_path / "noise_floor.json").read_text())["rows"]
    assert (row["cpu"], row["answer_flips"]) == (f"{noise_floor.LEGACY_RUN_CPU} / Intel Xeon", 1)
    assert f"{noise_floor.LEGACY_RUN_CPU} / Intel Xeon" in (tmp_path / "noise_floor.md").read_text()


def test_a_saved_run_on_more_items_serves_and_one_on_other_items_is_never_replaced(tmp_path, monkeypatch, capsys):
    """One run per variant: a run on a superset of the items is read (compared on these items); a run
    on other items stops the study with a one-line error before the model loads, the file untouched."""
    questions = [Question(f"q{i}", "stem", ("x", "y"), ("A", "B"), "A") for i in range(2)]
    (tmp_path / "runs").mkdir()
    batched = tmp_path / "runs" / "m_float32_obqa_batched.json"
    batched.write_text(json.dumps(_run("batched", [_item(0, "A"), _item(1, "B"), _item(2, "B")], cpu="Intel Xeon")))
    calls = []
    monkeypatch.setattr(runner.Session, "open", classmethod(lambda cls, model, numerics: calls.append("load")))
    monkeypatch.setattr(noise_floor, "load_split", lambda bench, split, limit: questions[:limit])
    monkeypatch.setattr(noise_floor, "machine_info", lambda: {"cpu": "AMD EPYC"})
    monkeypatch.setattr(noise_floor, "_run_variant",
                        lambda session, bench, variant, items: calls.append(variant) or [_item(0, "A"), _item(1, "A")])
    (row,) = noise_floor.measure("m", "float32", ["obqa"], 2, ["batched"], tmp_path, "cmd")
    assert calls == ["load", "reference"] and (row["n"], row["answer_flips"]) == (2, 1)
    before = batched.read_text()
    questions[:] = [Question(f"p{i}", "stem", ("x", "y"), ("A", "B"), "A") for i in range(2)]
    calls.clear()
    assert noise_floor.main(["--model", "m", "--numerics", "float32", "--benches", "obqa", "--limit", "2",
                             "--variants", "batched", "--no-reference", "--out-dir", str(tmp_path)]) == 2
    assert "other items" in capsys.readouterr().err and calls == [] and batched.read_text() == before
