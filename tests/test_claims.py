"""The paper's three claims, each with its test: holds, fails or undecided as the records show."""
from __future__ import annotations

from test_headline import DENSE, _flip, _record

from litestage_bench.records.results import write_record
from litestage_bench.studies import claims


def _timed(method: str, correct, seconds: float, name: str, ci):
    rec = _record(method, correct, seconds, name)
    rec.speedup_ci95 = ci
    return rec


def test_the_speedup_claim_holds_only_with_both_shown_and_fails_on_a_shown_loss():
    dense = _timed("dense", DENSE, 2.0, "dense", (1.0, 1.0))
    same = _timed("litestage", DENSE, 1.0, "litestage", (1.8, 2.2))  # 2.00x, dense's answers on every item
    assert claims.speedup_claim(same, dense)[3] == "holds"
    slow = _timed("litestage", DENSE, 1.0, "litestage", (1.5, 2.6))  # the CI reaches below 1.70x
    assert claims.speedup_claim(slow, dense)[3] == "undecided"
    lossy = _timed("litestage", _flip(DENSE, range(0, 24, 2)), 1.0, "litestage", (1.8, 2.2))  # 12 of 20 lost
    assert claims.speedup_claim(lossy, dense)[3] == "fails (accuracy lost)"
    assert claims.speedup_claim(_timed("litestage", DENSE, 1.6, "l", (1.1, 1.4)), dense)[3] == "fails (below 1.70x)"


def test_stagewise_against_uniform_is_judged_by_speed_and_accuracy_together():
    lite = _timed("litestage", DENSE, 1.0, "litestage", (1.9, 2.1))
    faster_uniform = _timed("litestage", DENSE, 0.5, "litestage-uniform", (3.8, 4.2))
    slower_uniform = _timed("litestage", DENSE, 2.0, "litestage-uniform", (0.95, 1.05))
    close_uniform = _timed("litestage", DENSE, 1.0, "litestage-uniform", (1.8, 2.2))
    assert claims.stagewise_claim(lite, faster_uniform)[3] == "fails (uniform is better)"
    assert claims.stagewise_claim(lite, slower_uniform)[3] == "holds"
    assert claims.stagewise_claim(lite, close_uniform)[3] == "undecided"


def test_the_exit_claim_needs_fewer_tokens_shown_and_no_shown_loss(tmp_path):
    lite = _timed("litestage", DENSE, 1.0, "litestage", (1.9, 2.1))
    no_exit = _timed("litestage", DENSE, 1.5, "litestage-no-exit", (1.2, 1.5))
    for it in lite.items:
        it.tokens = {"recall": 10, "analyze": 8, "summarize": 5}  # 35 -> 23 tokens on every item
    row = claims.exit_claim(lite, no_exit)
    assert row[3] == "holds" and row[1].startswith("1.52x fewer tokens per item (35.0 -> 23.0)")
    assert claims.exit_claim(no_exit, no_exit)[3] == "fails (tokens not fewer)"
    dense = _timed("dense", DENSE, 2.0, "dense", (1.0, 1.0))
    paths = {}
    for name, rec in {"dense": dense, "lite": lite, "no_exit": no_exit}.items():
        paths[name] = str(tmp_path / f"{name}.json")
        write_record(paths[name], rec)
    out = tmp_path / "claims.md"
    assert claims.main(["--dense", paths["dense"], "--litestage", paths["lite"], "--no-exit", paths["no_exit"],
                        "--out", str(out)]) == 0
    text = out.read_text()
    assert "no uniform record" in text and text.count("| holds ") == 2
    assert claims.main(["--dense", str(tmp_path / "none.json"), "--litestage", paths["lite"]]) == 2
