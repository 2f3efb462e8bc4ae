"""Speedups from batch 1 to batch B: the ratio with its test, the verdict and the factor that moved."""
from __future__ import annotations

from test_headline import DENSE, _batched, _flip, _record

from litestage_bench.records.results import write_record
from litestage_bench.studies import batch_shift


def _with_ci(rec, ci):
    rec.speedup_ci95 = ci
    rec.speedup_decomposition = {"total": {"token_factor": 1.5, "per_token_factor": rec.speedup / 1.5}}
    return rec


def test_each_record_is_judged_grows_shrinks_or_same_by_its_test_and_sorted_by_the_ratio(tmp_path):
    # batch 1: each 2.00x [1.9, 2.1]; batch 8: 1.2 (shrinks), 2.0 (same), 3.0 (grows)
    shrinks = _batched(_with_ci(_record("litestage", DENSE, 1.0, "litestage"), (1.9, 2.1)), 1.2, (1.1, 1.3))
    same = _batched(_with_ci(_record("sleb", DENSE, 1.0, "sleb-k2"), (1.9, 2.1)), 2.0, (1.8, 2.2))
    grows = _batched(_with_ci(_record("shortgpt", _flip(DENSE, {0}), 1.0, "shortgpt-k4"), (1.9, 2.1)), 3.0, (2.8, 3.2))
    rows = batch_shift.shift_rows([shrinks, same, grows])
    assert [(r[2], r[5], r[7]) for r in rows] == [("shortgpt-k4", "1.50", "grows"), ("sleb-k2", "1.00", "same"),
                                                  ("litestage", "0.60", "shrinks")]
    # _batched: fewer tokens 1.5 at both sizes, waiting 0.9, cheaper 1.2 / 1.35 against 2.0 / 1.5 at batch 1
    assert rows[2][8] == "cheaper tokens 0.67"
    assert batch_shift.shift(same)["p"] > 0.05 and batch_shift.shift(shrinks)["p"] < 0.001
    unbatched = _with_ci(_record("unified", DENSE, 1.0, "unified-k4"), (1.9, 2.1))
    for r in (shrinks, unbatched):
        write_record(tmp_path / f"{r.policy['name']}.json", r)
    out = tmp_path / "shift.md"
    assert batch_shift.main([str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| litestage " in text and "Not re-timed at batch B (left out): unified-k4." in text
