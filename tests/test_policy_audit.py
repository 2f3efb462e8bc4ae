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
