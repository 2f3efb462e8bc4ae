"""Records re-scored by another answer rule on the same generations: answers, accuracy and the
comparison with dense change; timing and the command stay."""
from __future__ import annotations

import json

from test_results import make_record

from litestage_bench.records.results import build_record, load_record, write_record
from litestage_bench.studies import rescore


def _with_cloze(rec, cloze: list[str]):
    for it, c in zip(rec.items, cloze):
        it.predictions_by_rule["cloze"] = c
    return rec


def test_a_dense_record_is_answered_by_the_new_rule_and_keeps_its_timing_and_command(tmp_path):
    dense = _with_cloze(make_record("dense", [True, False, True, True], speedup=1.0), ["A", "A", "B", "B"])
    new = rescore.rescored(dense, "cloze", None, "cmd")
    assert [it.prediction for it in new.items] == ["A", "A", "B", "B"] and new.accuracy == 0.5
    assert new.answer_rule == "cloze" and new.config["answer_rule"] == "cloze" and new.answer_rule_counts == {"cloze": 4}
    assert new.command == dense.command and new.extra["rescored"] == {"from_rule": "letter", "command": "cmd"}
    assert (new.timing, new.latency_s, new.machine, new.created) == (dense.timing, dense.latency_s, dense.machine,
                                                                    dense.created)


def test_a_rescored_record_carries_the_noise_floor_measured_today(tmp_path, monkeypatch):
    summary = {"by_config": {"m|float32": {"answer_flip_rate": 0.0, "identical_output_rate": 1.0, "n_items": 8,
                                           "answer_flips": 0, "comparisons": 8, "threads": 1, "variants": ["batched"]}}}
    (tmp_path / "floor.json").write_text(json.dumps(summary))
    monkeypatch.setenv("LITESTAGE_NOISE_FLOOR", str(tmp_path / "floor.json"))
    dense = _with_cloze(make_record("dense", [True, False, True, True], speedup=1.0), ["A", "A", "B", "B"])
    dense = rescore.dataclasses.replace(dense, model="m", numerics="float32", dtype="float32",
                                        noise_floor={"measured": False, "note": "not measured"})
    new = rescore.rescored(dense, "cloze", None, "cmd")
    assert new.noise_floor["measured"] and new.noise_floor["comparisons"] == 8


def test_a_methods_agreement_with_dense_is_recomputed_under_the_new_rule(tmp_path, capsys):
    dense = _with_cloze(make_record("dense", [True, False, True, True], speedup=1.0), ["A", "A", "B", "B"])
    method = _with_cloze(make_record("litestage", [True, False, True, True]), ["B", "B", "A", "A"])
    method = build_record(model=method.model, benchmark=method.benchmark, split="eval", method="litestage",
                          policy=method.policy, answer_rule="letter", items=method.items, command=method.command,
                          config={}, speedup=1.5, dense_items=dense.items)
    assert method.fidelity["agreement"] == 1.0  # the same letter answers
    new = rescore.rescored(method, "cloze", dense, "cmd")
    assert new.fidelity["agreement"] == 0.0 and new.speedup == 1.5  # every cloze answer differs
    for name, rec in (("dense", dense), ("method", method)):
        write_record(tmp_path / f"{name}.json", rec)
    assert rescore.main([str(tmp_path / "method.json"), "--answer-rule", "cloze", "--out-dir", str(tmp_path / "o")]) == 2
    assert "needs dense's" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert rescore.main([str(tmp_path / "method.json"), "--answer-rule", "cloze", "--dense-record",
                         str(tmp_path / "dense.json"), "--out-dir", str(tmp_path / "o")]) == 0
    assert load_record(tmp_path / "o" / "method.json").fidelity["agreement"] == 0.0
    assert json.loads((tmp_path / "method.json").read_text())["answer_rule"] == "letter"  # the record itself unchanged
    assert rescore.main([str(tmp_path / "dense.json"), "--answer-rule", "cloze", "--out-dir", str(tmp_path)]) == 2
    assert rescore.main([str(tmp_path / "dense.json"), "--answer-rule", "vote", "--out-dir", str(tmp_path / "p")]) == 2
