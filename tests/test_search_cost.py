"""The search-cost table: distinct plans counted once, items and seconds summed, the ratio of the
new search's seconds to the earlier one's, and a one-line error for policies of different searches."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from litestage_bench.core.errors import UserError
from litestage_bench.studies import search_cost

AGREE = {"kind": "agreement", "min_agreement": 0.9}


def _row(label: str, skip: list[int], n: int, answers: float, timing: float | None, why: str | None = None) -> dict:
    row = {"label": label, "sweep": label.split()[0], "sets": {"analyze": {"attn": skip, "ffn": []}}, "exits": {},
           "flips": {"n": n}, "answers_seconds": answers, "timing_seconds": timing, "answers_cpu": "cpu A",
           "stage_runs": n // 4}
    if why:
        row["stopped"] = {"why": why, "n": n}
    return row


def _policy(path, rows: list[dict], target=AGREE) -> str:
    chosen = {"speedup": 1.5, "speedup_ci95": [1.4, 1.6], "test": {"decision": "meets", "estimate": 0.95,
                                                                    "lower": 0.92}}
    path.write_text(json.dumps({"model": "m", "bench": "obqa", "target": target, "calibration": {"n": 200},
                                "stages": {s: {"n_skip": 2} for s in ("recall", "analyze", "summarize")},
                                "early_exit": {}, "chosen": chosen,
                                "candidates": [{"label": "dense", "sweep": "dense", "answers_seconds": 0}, *rows]}))
    return str(path)


def test_distinct_plans_count_once_and_the_ratio_is_new_over_earlier(tmp_path):
    earlier = _policy(tmp_path / "a.json", [_row("analyze #skip=2", [1, 2], 200, 100.0, 20.0),
                                            _row("summarize #skip=0", [1, 2], 200, 100.0, 20.0),  # the same plan
                                            _row("analyze #skip=4", [1, 2, 3, 4], 200, 80.0, 20.0)])
    new = _policy(tmp_path / "b.json", [_row("analyze #skip=2", [1, 2], 96, 40.0, None, "efficacy"),
                                        _row("analyze #skip=4", [1, 2, 3, 4], 48, 20.0, None, "futility")])
    first, second = search_cost.pair_rows(earlier, new)
    cols = dict(zip(search_cost.COLUMNS, first))
    assert (cols["candidates (distinct plans)"], cols["items measured"], cols["answers s"]) == ("2", "400", "180")
    assert cols["total s (every row)"] == "220 (340)" and cols["new / earlier: s"] == "-"
    cols = dict(zip(search_cost.COLUMNS, second))
    assert cols["items measured"] == "144" and cols["new / earlier: s"] == f"{60 / 220:.2f}"
    assert cols["stage runs"] == "36" and cols["new / earlier: stage runs"] == f"{36 / 100:.2f}"
    assert cols["stopped (why)"] == "efficacy 1, futility 1" and cols["speedup [95% CI]"] == "1.50x [1.40, 1.60]"


def test_policies_of_different_searches_give_a_one_line_error(tmp_path, capsys):
    a = _policy(tmp_path / "a.json", [])
    b = _policy(tmp_path / "b.json", [], {"kind": "accuracy", "tolerance_points": 4.0})
    assert search_cost.main(["--pair", a, b, "--out", str(tmp_path / "t.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not the same search" in err[0] and not (tmp_path / "t.md").exists()
    (tmp_path / "bad.json").write_text("{")
    assert search_cost.main(["--pair", str(tmp_path / "bad.json"), a]) == 2


def _timed_record(path, policy_path, method_s: dict[str, float], with_dense_rounds: bool = True,
                  agreement: float = 0.95):
    """A record of 4 timed items; dense takes 10 s on every item and round, the method `method_s[id]`
    (rounds slightly apart)."""
    ids = list(method_s)
    rounds = lambda total: [{"stage_s": {"recall": total * 0.99}}, {"stage_s": {"recall": total * 1.01}}]  # noqa: E731
    items = [{"id": i, "timing_rounds": rounds(method_s[i])} for i in ids]
    timing = {"dense_rounds": {i: rounds(10.0) for i in ids}} if with_dense_rounds else {}
    speed = statistics.geometric_mean([10.0 / v for v in method_s.values()])
    path.write_text(json.dumps({"items": items, "timing": timing, "speedup": speed,
                                "speedup_ci95": [speed * 0.9, speed * 1.1], "policy": {"policy": str(policy_path)},
                                "fidelity": {"n": 200, "wrong_to_correct": 2, "correct_to_wrong": 3,
                                             "agreement": agreement}}))
    return str(path)


def test_two_chosen_policies_records_are_compared_paired_by_item(tmp_path):
    from litestage_bench.studies.search_cost import record_rows
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({"model": "m", "bench": "obqa", "target": {"kind": "agreement", "min_agreement": 0.9},
                                  "options": {"confidence": 0.95}, "candidates": [], "chosen": {}}))
    earlier = _timed_record(tmp_path / "a.json", policy, {"q1": 8.0, "q2": 5.0, "q3": 9.0, "q4": 6.0})
    faster = _timed_record(tmp_path / "b.json", policy, {"q1": 7.2, "q2": 4.6, "q3": 8.1, "q4": 5.5})
    row = record_rows(earlier, faster)[1]
    # every item about 1.1x faster: the paired ratio sees it although the items' speedups differ widely
    ratio = float(row[4].split()[0])
    assert 1.08 < ratio < 1.12 and "paired t, 4 items" in row[4]
    assert float(row[4].split("p ")[1].split()[0]) < 0.01
    assert row[3].startswith("meets: agreement +0.950")
    old = _timed_record(tmp_path / "c.json", policy, {"q1": 8.0, "q2": 5.0, "q3": 9.0, "q4": 6.0},
                        with_dense_rounds=False)
    assert "z on the two CIs" in record_rows(old, faster)[1][4]
    other = tmp_path / "d.json"
    other.write_text(json.dumps({**json.loads(Path(faster).read_text()), "items": [{"id": "x"}]}))
    with pytest.raises(UserError, match="other evaluation items"):
        record_rows(earlier, str(other))


def test_derived_stage_runs_are_named_apart_from_the_executed_ones():
    from litestage_bench.studies.search_cost import cost
    policy = {"calibration": {"n": 8}, "candidates": [
        {"sweep": "analyze early exit", "sets": {}, "exits": {"analyze": {"threshold": t}}, "flips": {"n": 8},
         "stage_runs": 1, "stage_runs_derived": 1} for t in (0.3, 0.2)]}
    c = cost(policy)
    assert (c["stage_runs"], c["stage_runs_derived"]) == (2, 2)
