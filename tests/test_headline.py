"""The headline table: LiteStage against the best baseline at matched speedup and at matched agreement."""
from __future__ import annotations

import math

import pytest

from litestage_bench.records.results import ItemResult, build_record, write_record
from litestage_bench.studies import headline

N = 40


def _items(correct: list[bool], seconds: float, wobble: float = 0.0) -> list[ItemResult]:
    """Every item takes `seconds`, times e^(+-wobble) on alternate items (the geometric mean stays)."""
    out = []
    for i, c in enumerate(correct):
        t = seconds * math.exp(wobble * (-1) ** i)
        out.append(ItemResult(id=f"q{i}", answer="A", prediction="A" if c else "B", rule="letter", correct=c,
                              latency_s=t, stage_latency_s={"recall": t / 2, "analyze": t / 4, "summarize": t / 4},
                              tokens={"recall": 10, "analyze": 20, "summarize": 5}))
    return out


DENSE = [i % 2 == 0 for i in range(N)]


def _record(method: str, correct: list[bool], seconds: float, name: str, interleaved: bool = True,
            wobble: float = 0.0):
    """A record timed in interleaved rounds, or (interleaved=False) as records made before them: no rounds."""
    rec = build_record(model="m", benchmark="obqa", split="eval", method=method, policy={"name": name},
                       answer_rule="letter", items=_items(correct, seconds, wobble), command=f"run {name}", config={},
                       dense_items=_items(DENSE, 2.0))
    if not interleaved:
        del rec.timing["rounds"], rec.timing["speedup_rounds"]
    return rec


def _flip(correct: list[bool], idx) -> list[bool]:
    return [not c if i in idx else c for i, c in enumerate(correct)]


def test_matched_speedup_picks_the_most_accurate_baseline_within_a_tenth():
    lite = _record("litestage", DENSE, 1.0, "litestage")  # 2.00x, dense's answers
    near_good = _record("unified", _flip(DENSE, {0, 2}), 1.05, "unified-k4")  # 1.90x, loses 2 items
    near_bad = _record("shortgpt", _flip(DENSE, range(0, 20, 2)), 0.97, "shortgpt-k4")  # 2.06x, loses 10
    far = _record("sleb", DENSE, 1.6, "sleb-k2")  # 1.25x: outside +/-0.1x, though as accurate as dense
    speed_row = headline.matched_rows([lite, near_good, near_bad, far])[0]
    assert speed_row[2] == "unified-k4"  # the most accurate of the two within 0.1x
    assert speed_row[4].startswith("accuracy +0.050") and "(+2/-0)" in speed_row[4]
    assert speed_row[5] == "0.500"  # exact McNemar with 2 discordant items


def test_no_baseline_within_the_speed_window_says_so():
    lite = _record("litestage", DENSE, 1.0, "litestage")
    far = _record("sleb", DENSE, 1.6, "sleb-k2")
    worse = _record("unified", _flip(DENSE, {0, 2, 4}), 2.0, "unified-k4")  # 1.00x, loses 3 items
    rows = headline.matched_rows([lite, far, worse])
    assert rows[0][2] == "none (nearest sleb-k2)" and rows[0][3] == "1.25x"
    assert rows[0][4].startswith("accuracy +0.000")  # still compared, so a reader sees which is more accurate
    assert rows[1][2] == "sleb-k2" and rows[1][4] == "speedup ratio 1.60x"  # same agreement: matched
    rows = headline.matched_rows([lite, worse])
    assert rows[1][2] == "none (nearest unified-k4)" and rows[1][3] == "1.00x (agreement 0.925)"


def test_a_speedup_timed_sequentially_is_starred_and_explained(tmp_path):
    lite = _record("litestage", DENSE, 1.0, "litestage")
    old = _record("unified", DENSE, 1.05, "unified-k4", interleaved=False)
    speed_row, agree_row = headline.matched_rows([lite, old])
    assert speed_row[1] == "speedup 2.00x +/-0.1x" and speed_row[3] == "1.90x*"
    assert agree_row[3].startswith("1.90x* (agreement")
    assert "\\* timed sequentially" in headline.headline_markdown([lite, old], "cmd")
    assert "timed sequentially" not in headline.headline_markdown([lite, _record("unified", DENSE, 1.05, "u")], "cmd")


def test_matched_agreement_compares_speedups_with_a_test():
    lite = _record("litestage", _flip(DENSE, range(0, 2)), 1.0, "litestage", wobble=0.02)  # agreement 0.95
    same_agree = _record("unified", _flip(DENSE, range(0, 3)), 1.6, "unified-k4", wobble=0.02)  # agreement 0.925
    rows = headline.matched_rows([lite, same_agree])
    agree_row = rows[1]
    assert agree_row[2] == "unified-k4" and agree_row[4] == "speedup ratio 1.60x"
    assert agree_row[5] == "<0.001 (paired t)"  # both keep dense's rounds per item
    del same_agree.timing["dense_rounds"]  # as records made before they did: the z test on the two CIs
    ratio, p, test = headline.speed_ratio_test(lite, same_agree)
    assert ratio == pytest.approx(1.6) and test == "z"
    assert p is not None and p < 0.001  # 2% per-item noise around 2.00x and 1.25x
    exact = _record("unified", _flip(DENSE, range(0, 3)), 1.6, "unified-k4")  # every ratio the same: no CI
    del exact.timing["dense_rounds"]
    assert headline.speed_ratio_test(lite, exact) == (pytest.approx(1.6), None, "z")


def _spread_record(method: str, seconds: list[float]):
    items = _items(DENSE, 1.0)
    for it, t in zip(items, seconds):
        it.latency_s, it.stage_latency_s = t, {"recall": t / 2, "analyze": t / 4, "summarize": t / 4}
    return build_record(model="m", benchmark="obqa", split="eval", method=method, policy={"name": method},
                        answer_rule="letter", items=items, command=f"run {method}", config={},
                        dense_items=_items(DENSE, 2.0))


def test_two_records_timed_on_the_same_items_are_compared_paired_by_item():
    """Speedups that vary widely across items (item length) but are 5% apart on every item, up to 1%
    noise: the paired t test sees the difference, the z test on the two wide CIs does not."""
    import random
    rng = random.Random(0)
    lengths = [math.exp(rng.gauss(0, 0.5)) for _ in range(N)]
    a = _spread_record("litestage", lengths)
    b = _spread_record("unified", [t * 1.05 * math.exp(rng.gauss(0, 0.01)) for t in lengths])
    ratio, p, test = headline.speed_ratio_test(a, b)
    assert test == "paired t" and ratio == pytest.approx(1.05, rel=0.01) and p < 1e-6
    for rec in (a, b):
        del rec.timing["dense_rounds"]
    ratio_z, p_z, test_z = headline.speed_ratio_test(a, b)
    assert test_z == "z" and ratio_z == pytest.approx(ratio) and p_z > 0.5


def test_markdown_through_the_command_line(tmp_path, capsys):
    recs = [_record("litestage", DENSE, 1.0, "litestage"), _record("unified", DENSE, 1.05, "unified-k4")]
    for r in recs:
        write_record(tmp_path / f"{r.policy['name']}.json", r)
    out = tmp_path / "table.md"
    assert headline.main([str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## m / obqa" in text and "fewer tokens x" in text and "LiteStage against the best baseline" in text
    missing = next(line for line in text.splitlines() if line.startswith("No record yet:"))
    names = set(missing.removeprefix("No record yet:").rstrip(".").replace(",", " ").split())
    assert {"sleb", "selfspec", "litestage-spec"} <= names and not {"unified", "litestage"} & names
    assert headline.main([str(tmp_path / "missing")]) == 2
    assert "litestage-bench: error:" in capsys.readouterr().err


def test_a_baseline_with_one_answer_on_every_item_is_left_out_of_the_matching():
    lite = _record("litestage", _flip(DENSE, range(0, 2)), 1.0, "litestage")  # 2.00x, agreement 0.95
    constant = _record("unified", [True] * N, 1.0, "unified-k4")  # answers A everywhere: 2.00x, accuracy 1.0
    reasoning = _record("sleb", DENSE, 1.05, "sleb-k2")  # 1.90x, dense's answers
    rows = headline.matched_rows([lite, constant, reasoning])
    assert rows[0][2] == "sleb-k2"  # unified-k4 is as fast and more accurate, but constant
    assert headline.top_answer(constant) == ("A", 1.0) and headline.top_answer(reasoning) == ("A", 0.5)
    text = headline.headline_markdown([lite, constant, reasoning], "cmd")
    assert "one answer on every item: unified-k4." in text and "| A 1.000 " in text
    assert "one answer on every item" not in headline.headline_markdown([lite, reasoning], "cmd")


def test_litestage_spec_is_shown_but_not_matched_as_a_baseline():
    lite = _record("litestage", DENSE, 1.0, "litestage")  # 2.00x
    spec = _record("litestage-spec", DENSE, 1.0, "litestage-spec")  # as fast, as accurate: LiteStage's own
    other = _record("sleb", _flip(DENSE, {0}), 1.05, "sleb-k2")
    assert headline.matched_rows([lite, spec, other])[0][2] == "sleb-k2"
    assert "| litestage-spec " in headline.headline_markdown([lite, spec, other], "cmd")


def _batched(rec, speedup: float, ci: tuple[float, float], batch: int = 8):
    """rec with a batch-B throughput measurement (the fields the table reads)."""
    rec.timing["throughput"] = {"throughput_speedup": speedup, "throughput_speedup_ci95": list(ci),
                                "batch_size": batch, "decomposition": {"total": {
                                    "token_factor": 1.5, "waiting_factor": 0.9, "per_token_factor": speedup / 1.35}}}
    return rec


def test_records_retimed_at_batch_b_add_the_column_and_a_matched_agreement_row_by_throughput():
    lite = _batched(_record("litestage", _flip(DENSE, range(0, 2)), 1.0, "litestage"), 1.2, (1.1, 1.3))
    fast_at_1 = _batched(_record("unified", _flip(DENSE, range(0, 3)), 0.9, "unified-k4"), 0.8, (0.75, 0.85))
    slow_at_1 = _batched(_record("sleb", _flip(DENSE, range(0, 4)), 1.8, "sleb-k2"), 1.0, (0.95, 1.05))
    unbatched = _record("shortgpt", _flip(DENSE, range(0, 2)), 0.5, "shortgpt-k4")  # not re-timed at batch 8
    rows = headline.matched_rows([lite, fast_at_1, slow_at_1, unbatched])
    assert [r[1].split(",")[-1].strip() for r in rows][2] == "batch 8"
    # at batch 1 shortgpt is the fastest of the matched; at batch 8 among the re-timed ones sleb-k2 is
    assert rows[1][2] == "shortgpt-k4" and rows[2][2] == "sleb-k2"
    assert rows[2][3] == "1.00x (agreement 0.900)" and rows[2][4] == "batch-8 speedup ratio 1.20x"
    assert rows[2][5] == "<0.001 (z)"  # 1.2 [1.1, 1.3] against 1.0 [0.95, 1.05]: z = 3.7
    text = headline.headline_markdown([lite, fast_at_1, slow_at_1, unbatched], "cmd")
    assert "batch-B speedup [95% CI]" in text and "1.20x [1.10, 1.30] b8 (1.50 x 0.90 x 0.89)" in text
    # a table without any batch-B record keeps its columns
    assert "batch-B speedup" not in headline.headline_markdown([_record("litestage", DENSE, 1.0, "l")], "cmd")


def test_the_held_out_prediction_stands_beside_the_measured_speedup(tmp_path):
    import dataclasses
    import json as _json

    lite = dataclasses.replace(_record("litestage", DENSE, 1.0, "litestage"),
                               command="litestage-bench run --model m --bench obqa --out results/x/lite.json")
    (tmp_path / "fit_m_float32_cpu_x.json").write_text(_json.dumps({"residuals": {
        "results/x/lite.json": {"measured": lite.speedup, "held_out": 1.87, "fitted": 1.9}}}))
    assert headline.predicted_cell(lite, headline.held_out_predictions(tmp_path)) == "1.87x"
    moved = dataclasses.replace(lite, speedup=lite.speedup * 1.1)  # re-timed since the fit: not its prediction
    assert headline.predicted_cell(moved, headline.held_out_predictions(tmp_path)) == "-"
    text = headline.headline_markdown([lite], "cmd", fits=tmp_path)
    assert "predicted (held out)" in text and "| 1.87x" in text
    (tmp_path / "fit_bad.json").write_text("{")
    with pytest.raises(headline.UserError, match="unreadable"):
        headline.held_out_predictions(tmp_path)


def test_throughput_copies_replace_their_records_by_file_name_once_their_answers_match(tmp_path, capsys):
    lite = _record("litestage", _flip(DENSE, range(0, 2)), 1.0, "litestage")
    base = _record("sleb", _flip(DENSE, range(0, 3)), 1.05, "sleb-k2")
    for r in (lite, base):
        write_record(tmp_path / f"{r.policy['name']}.json", r)
    copies = tmp_path / "batch8"
    copies.mkdir()
    write_record(copies / "litestage.json", _batched(_record("litestage", _flip(DENSE, range(0, 2)), 1.0, "litestage"),
                                                     1.2, (1.1, 1.3)))
    out = tmp_path / "table.md"
    args = [str(tmp_path / "litestage.json"), str(tmp_path / "sleb-k2.json"), "--throughput", str(copies)]
    assert headline.main([*args, "--out", str(out)]) == 0
    text = out.read_text()
    assert "1.20x [1.10, 1.30] b8" in text and "--throughput" in text  # the copy's column, the command named
    assert "b8" not in headline.headline_markdown([lite, base], "cmd")
    write_record(copies / "sleb-k2.json", _batched(_record("sleb", DENSE, 1.05, "sleb-k2"), 1.0, (0.9, 1.1)))
    assert headline.main(args) == 2  # other answers than the record's: refused in one line
    err = capsys.readouterr().err
    assert "is not a batch-B copy of" in err and "Traceback" not in err
    assert headline.main([str(tmp_path / "litestage.json"), "--throughput", str(tmp_path / "none")]) == 2
