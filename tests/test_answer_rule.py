"""The answer rule chosen on calibration items: the most accurate rule on the same generations,
paired against the record's own, and refused on evaluation items or for a method's record."""
from __future__ import annotations

import dataclasses

from litestage_bench.records.results import write_record
from litestage_bench.studies import answer_rule
from test_results import make_record


def _calib(tmp_path, cloze: list[str]):
    """A dense calibration record (rule letter: 3 of 4 right) whose cloze answers are `cloze`."""
    rec = make_record("dense", [True, False, True, True])
    rec = dataclasses.replace(rec, split="calib")
    for it, c in zip(rec.items, cloze):
        it.predictions_by_rule["cloze"] = c
    path = tmp_path / "calib.json"
    write_record(path, rec)
    return str(path), rec


def test_the_most_accurate_rule_is_chosen_and_a_tie_keeps_the_records_own(tmp_path):
    path, rec = _calib(tmp_path, ["A", "A", "A", "A"])  # cloze 4/4, letter 3/4, regex 3/4
    assert answer_rule.choose(rec) == "cloze"
    rows = {row[3].split()[0]: row for row in answer_rule.record_rows(path)}
    assert rows["cloze"][5] == "+1/-0" and rows["cloze"][7] == "yes" and rows["letter"][5] == "-"
    assert rows["cloze"][4].startswith("1.000")
    _, tied = _calib(tmp_path, ["A", "B", "A", "A"])  # cloze 3/4 = letter = regex: the record's own stays
    assert answer_rule.choose(tied) == "letter"


def test_evaluation_items_or_a_method_are_refused_in_one_line(tmp_path, capsys):
    rec = make_record("dense")
    write_record(tmp_path / "eval.json", rec)
    assert answer_rule.main([str(tmp_path / "eval.json"), "--out", str(tmp_path / "t.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not dense on calibration items" in err[0] and not (tmp_path / "t.md").exists()


def test_a_searchs_dense_row_serves_as_a_calibration_record_under_the_models_default_rule(tmp_path):
    import json

    from litestage_bench.records.results import item_to_dict
    rec = make_record("dense", [True, False, True, True])
    for it in rec.items:
        it.predictions_by_rule["cloze"] = "A"  # cloze 4/4 against letter's 3/4
    row = {"kind": "dense", "rows_version": 1, "key": {"model": "qwen2.5-coder-1.5b", "bench": "obqa", "config": {}},
           "value": {"ids": [it.id for it in rec.items], "items": [item_to_dict(it) for it in rec.items], "means": {}}}
    path = tmp_path / "dense-0123.json"
    path.write_text(json.dumps(row))
    rows = {r[3].split()[0]: r for r in answer_rule.record_rows(str(path))}
    assert rows["cloze"][3] == "cloze (the record's)" and rows["cloze"][7] == "yes"  # the 1.5B's default rule
    assert rows["letter"][5] == "+0/-1" and rows["cloze"][2] == "4"
    out = tmp_path / "t.md"
    assert answer_rule.main([str(path), "--out", str(out)]) == 0 and "dense calibration pass" in out.read_text()
    path.write_text(json.dumps({**row, "value": {}}))
    assert answer_rule.main([str(path)]) == 2
