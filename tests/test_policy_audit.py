"""Re-judging a committed policy's candidates with the confidence rule."""
from __future__ import annotations

import json

from litestage_bench.studies import policy_audit


def _cand(accuracy, gained, lost):
    return {"accuracy": accuracy, "agreement": 1 - (gained + lost) / 50,
            "flips": {"wrong_to_correct": gained, "correct_to_wrong": lost, "changed": gained + lost}}


def test_point_rule_acceptances_are_re_judged(tmp_path, capsys):
    policy = {"target": {"kind": "accuracy", "tolerance_points": 4.0, "min_accuracy": 0.46},
              "calibration": {"n": 50},
              "candidates": [_cand(0.5, 0, 0), _cand(0.5, 0, 0), _cand(0.48, 5, 6), _cand(0.30, 0, 10)],
              "chosen": _cand(0.48, 5, 6)}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(policy))
    row = policy_audit.audit_row(str(path), 0.95)
    # the chosen one passed the point rule (0.48 >= 0.46) but its lower bound does not: undecided
    assert row[4] == "undecided"
    assert row[5] == "2 of 3"  # point rule: the identical candidate and the chosen one
    assert row[6:] == ["1", "1", "1"]  # identical: meets; 11 discordant: undecided; -20 points: clearly misses
    assert policy_audit.main([str(tmp_path / "missing.json")]) == 2
    assert "litestage-bench: error:" in capsys.readouterr().err


def test_a_candidate_stopped_at_a_look_is_judged_on_its_own_items(tmp_path):
    """2 gained and 12 lost of 48 items (a stop after the first look of 200): -21 points, clearly below
    -4 on its 48 items; the same counts read over the policy's 200 items would be -5 points, undecided."""
    stopped = {"accuracy": 0.3, "agreement": 1 - 14 / 48,
               "flips": {"wrong_to_correct": 2, "correct_to_wrong": 12, "changed": 14, "n": 48}}
    policy = {"target": {"kind": "accuracy", "tolerance_points": 4.0, "min_accuracy": 0.46},
              "calibration": {"n": 200}, "candidates": [_cand(0.5, 0, 0), stopped], "chosen": _cand(0.5, 0, 0)}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(policy))
    assert policy_audit.audit_row(str(path), 0.95)[6:] == ["0", "0", "1"]
    stopped["flips"].pop("n")
    path.write_text(json.dumps(policy))
    assert policy_audit.audit_row(str(path), 0.95)[6:] == ["0", "1", "0"]


def test_each_row_is_judged_at_the_confidences_its_test_recorded(tmp_path):
    """5 gained and 7 lost of 200 meets at 95% but not at the last look's spent 96%: a row that recorded
    96% is re-judged at 96% (undecided), one that recorded nothing at --confidence (meets)."""
    def row(test=None):
        r = {"accuracy": 0.49, "agreement": 1 - 12 / 200,
             "flips": {"wrong_to_correct": 5, "correct_to_wrong": 7, "changed": 12, "n": 200}}
        return {**r, "test": test} if test else r
    spent = row({"confidence": 0.95, "meets_confidence": 0.96, "decision": "undecided"})
    policy = {"target": {"kind": "accuracy", "tolerance_points": 4.0, "min_accuracy": 0.46},
              "calibration": {"n": 200}, "candidates": [_cand(0.5, 0, 0), spent, row()], "chosen": row()}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(policy))
    audited = policy_audit.audit_row(str(path), 0.95)
    assert audited[4] == "meets" and audited[6:] == ["1", "1", "0"]
