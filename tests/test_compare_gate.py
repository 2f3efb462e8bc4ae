"""`litestage-bench compare` as a regression gate: exact answers for float32 on CPU, a speed ratio with
a tolerance from the measured round spread, and exit codes 0 / 1 / 2 (no models)."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest

from litestage_bench.cli import EXIT_REGRESSION, EXIT_USAGE, main
from litestage_bench.records import report
from litestage_bench.records.report import changed_answers, compare_records, exact_numerics
from litestage_bench.records.results import ItemResult, build_record, record_to_dict, write_record

N = 200
FLIPPED = "q137"


def _items(flipped: tuple[str, ...] = ()) -> list[ItemResult]:
    """200 items, two thirds right; each id in ``flipped`` changes its answer (right -> wrong)."""
    out = []
    for i in range(N):
        iid = f"q{i:03d}"
        pred = "A" if i % 3 else "B"
        if iid in flipped:
            pred = "C" if pred == "A" else "A"
        out.append(ItemResult(id=iid, answer="A", prediction=pred, rule="letter", correct=pred == "A",
                              latency_s=1.0, stage_latency_s={}, tokens={"recall": 10}))
    return out


def _record(items=None, numerics="float32", device="cpu", speedup=1.5, rounds=None):
    return build_record(
        model="smollm2-135m", benchmark="obqa", split="eval", method="unified", policy={"name": "unified-k4"},
        answer_rule="letter", items=items if items is not None else _items(), command="test", config={},
        speedup=speedup, timing={"speedup_rounds": rounds} if rounds is not None else None,
        dtype="bfloat16" if numerics == "bfloat16" else "float32", numerics=numerics, device=device,
    )


def _compare(tmp_path, capsys, base, cur, *extra: str) -> tuple[int, str, str]:
    write_record(tmp_path / "base.json", base)
    write_record(tmp_path / "cur.json", cur)
    code = main(["compare", str(tmp_path / "base.json"), str(tmp_path / "cur.json"), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def _row(text: str) -> dict[str, str]:
    """The first data row of the report's table, by column name."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    cells = lambda ln: [c.strip() for c in ln.strip().strip("|").split("|")]  # noqa: E731
    return dict(zip(cells(lines[0]), cells(lines[2])))


# ----------------------------------------------------------------------------- exact answers


def test_one_flipped_answer_in_float32_on_cpu_is_a_regression_naming_the_item(tmp_path, capsys):
    code, out, err = _compare(tmp_path, capsys, _record(), _record(_items(flipped=(FLIPPED,))))
    assert code == EXIT_REGRESSION, err
    assert f"REGRESSION: 1 answer changed (ids: {FLIPPED})" in out
    assert _row(out)["changed answers"] == "1"
    assert "exact (float32 on CPU: any changed answer)" in out
    assert "accuracy outside" not in out  # one flip in 200 stays inside the CI: the exact rule caught it


def test_identical_float32_record_passes(tmp_path, capsys):
    code, out, _ = _compare(tmp_path, capsys, _record(), _record())
    assert code == 0 and "Result: no regression" in out and _row(out)["changed answers"] == "0"


@pytest.mark.parametrize("numerics", ["bfloat16", "bf16-matmul"])
def test_one_flip_in_reduced_precision_is_judged_by_the_ci(numerics, tmp_path, capsys):
    code, out, _ = _compare(tmp_path, capsys, _record(numerics=numerics),
                            _record(_items(flipped=(FLIPPED,)), numerics=numerics))
    assert code == 0, out
    assert _row(out)["changed answers"] == "-" and "95% CI" in out and "exact (" not in out


def test_accuracy_drop_regresses_in_both_modes():
    flipped = tuple(f"q{i:03d}" for i in range(1, N, 3))[:40]  # 40 right answers turned wrong
    for numerics, needle in (("float32", "REGRESSION: 40 answers changed"),
                             ("bfloat16", "REGRESSION: accuracy outside reference CI")):
        text, regressed = compare_records([_record(numerics=numerics)],
                                          [_record(_items(flipped), numerics=numerics)])
        assert regressed and needle in text, numerics
    assert "+30 more)" in compare_records([_record()], [_record(_items(flipped))])[0]


def test_exact_mode_needs_float32_on_cpu_on_both_sides():
    f32 = _record()
    assert exact_numerics(f32, dataclasses.replace(f32, device=None))  # old records: no device = CPU
    assert not exact_numerics(f32, dataclasses.replace(f32, device="cuda:0"))
    assert not exact_numerics(f32, _record(numerics="bf16-matmul"))
    assert exact_numerics(dataclasses.replace(f32, numerics=None), f32)  # older records: numerics = dtype


def test_an_id_on_one_side_only_is_a_changed_answer():
    cur = _items()
    cur[5] = dataclasses.replace(cur[5], id="q999")
    assert changed_answers(_record(), _record(cur)) == ["q005", "q999"]


# ----------------------------------------------------------------------------- gold labels and scoring


def _moved_gold(items: list[ItemResult]) -> list[ItemResult]:
    """The record's gold labels moved: every correctly answered item's gold goes to another option,
    the predictions stay, ``correct`` follows (so the rebuilt record's accuracy is consistent)."""
    out = []
    for it in items:
        gold = it.answer if not it.correct else ("B" if it.answer == "A" else "A")
        out.append(dataclasses.replace(it, answer=gold, correct=it.prediction == gold))
    return out


def _quarter_right() -> list[ItemResult]:
    """100 items, 24 answered right (gold A; predictions A or B)."""
    return [ItemResult(id=f"q{i:03d}", answer="A", prediction="A" if i < 24 else "B", rule="letter",
                       correct=i < 24, latency_s=1.0, stage_latency_s={}, tokens={"recall": 10})
            for i in range(100)]


def test_moved_gold_labels_with_the_same_predictions_regress(tmp_path, capsys):
    base = _record(_quarter_right())
    cur = _record(_moved_gold(base.items))
    assert (base.accuracy, cur.accuracy) == (0.24, 0.0)
    assert [it.prediction for it in cur.items] == [it.prediction for it in base.items]
    code, out, err = _compare(tmp_path, capsys, base, cur)
    assert code == EXIT_REGRESSION, out + err
    assert ("REGRESSION: gold label changed on 24 items "
            "(ids: q000, q001, q002, q003, q004, q005, q006, q007, q008, q009 +14 more)") in out
    assert _row(out)["changed answers"] == "0"  # no prediction changed: the gold labels did
    assert "correctness changed" not in out  # explained by the gold labels, not named twice
    assert "Result: REGRESSION" in out


@pytest.mark.parametrize("numerics", ["float32", "bfloat16"])
def test_a_correctness_flip_with_the_same_prediction_regresses(numerics, tmp_path, capsys):
    cur = _items()
    cur[137] = dataclasses.replace(cur[137], correct=not cur[137].correct)  # same prediction, same gold
    code, out, _ = _compare(tmp_path, capsys, _record(numerics=numerics), _record(cur, numerics=numerics))
    assert code == EXIT_REGRESSION, out
    assert f"REGRESSION: correctness changed on 1 item with the same prediction and gold (ids: {FLIPPED})" in out


@pytest.mark.parametrize("numerics", ["float32", "bfloat16"])
def test_a_gold_label_moved_on_a_wrong_item_regresses_in_both_modes(numerics, tmp_path, capsys):
    cur = _items()
    cur[0] = dataclasses.replace(cur[0], answer="C")  # predicted B, still wrong: accuracy unchanged
    code, out, _ = _compare(tmp_path, capsys, _record(numerics=numerics), _record(cur, numerics=numerics))
    assert code == EXIT_REGRESSION, out
    assert "REGRESSION: gold label changed on 1 item (ids: q000)" in out


def test_changed_ids_regress_in_reduced_precision_too(tmp_path, capsys):
    cur = _items()
    cur[5] = dataclasses.replace(cur[5], id="q999")
    code, out, _ = _compare(tmp_path, capsys, _record(numerics="bfloat16"), _record(cur, numerics="bfloat16"))
    assert code == EXIT_REGRESSION, out
    assert "REGRESSION: item set changed, 2 ids on one side only (ids: q005, q999)" in out


def test_gold_compared_as_answers_are_matched_and_prediction_flips_in_bf16_stay_ci_judged():
    cur = [dataclasses.replace(it, answer=" a") for it in _items()]  # case and spaces do not decide
    assert not compare_records([_record()], [_record(cur)])[1]
    text, regressed = compare_records([_record(numerics="bfloat16")],
                                      [_record(_items(flipped=(FLIPPED,)), numerics="bfloat16")])
    assert not regressed and "correctness changed" not in text  # the prediction changed with it


# ----------------------------------------------------------------------------- speed


TIGHT = [2.0, 2.02, 1.98]


@pytest.mark.parametrize("base_rounds, cur_speedup, cur_rounds, regressed", [
    (TIGHT, 1.4, [1.4, 1.41, 1.39], True),          # 30% slower, rounds agree: a regression
    ([1.0, 3.0, 2.0], 1.4, [0.7, 2.1, 1.4], False),  # the same drop inside a wide round spread
    (TIGHT, 1.9, [1.9, 1.92, 1.88], False),          # 5% slower, within --speed-tol 0.10
])
def test_speed_ratio_with_a_tolerance_from_the_round_spread(base_rounds, cur_speedup, cur_rounds, regressed,
                                                            tmp_path, capsys):
    code, out, _ = _compare(tmp_path, capsys, _record(speedup=2.0, rounds=base_rounds),
                            _record(speedup=cur_speedup, rounds=cur_rounds), "--speed-tol", "0.10")
    assert code == (EXIT_REGRESSION if regressed else 0), out
    assert ("REGRESSION: speed" in out) == regressed
    lb, lc = [math.log(x) for x in base_rounds], [math.log(x) for x in cur_rounds]
    var = lambda xs: sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / (len(xs) - 1)  # noqa: E731
    tol = max(-math.log(0.9), 3 * math.sqrt(var(lb) / 3 + var(lc) / 3))
    assert _row(out)["speed tol"] == f"-{1 - math.exp(-tol):.0%}"


def test_speed_without_rounds_keeps_the_whole_ci_rule():
    base = _record(speedup=2.0, rounds=[2.0])  # one round: no spread to measure
    _, regressed = compare_records([base], [_record(speedup=1.7)])
    assert regressed
    text, regressed = compare_records([base], [dataclasses.replace(_record(speedup=1.7), speedup_ci95=(1.5, 1.9))])
    assert not regressed and "-10% (whole CI)" in text


# ----------------------------------------------------------------------------- exit codes


def _one_line_error(code: int, err: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == EXIT_USAGE and len(lines) == 1 and lines[0].startswith("litestage-bench: error:"), err
    assert "Traceback" not in err


def _broken_item(d: dict) -> None:
    d["items"][3]["prediction"] = ["A"]


@pytest.mark.parametrize("breaks", [
    "{not json",
    lambda d: d.pop("items"),
    lambda d: d.update(accuracy="abc"),
    lambda d: d.update(items={"q0": {}}),
    lambda d: d["items"][0].pop("prediction"),
    _broken_item,  # loads, but compare could not use it
    lambda d: d.update(speedup="fast"),
])
def test_malformed_record_exits_2_with_one_error_line(breaks, tmp_path, capsys):
    write_record(tmp_path / "base.json", _record())
    bad = tmp_path / "cur.json"
    if isinstance(breaks, str):
        bad.write_text(breaks)
    else:
        d = record_to_dict(_record())
        breaks(d)
        bad.write_text(json.dumps(d))
    code = main(["compare", str(tmp_path / "base.json"), str(bad)])
    _one_line_error(code, capsys.readouterr().err)


def test_duplicate_keys_and_bad_speed_tol_exit_2(tmp_path, capsys):
    for name in ("a.json", "b.json"):
        write_record(tmp_path / "dup" / name, _record())
    write_record(tmp_path / "cur.json", _record())
    _one_line_error(main(["compare", str(tmp_path / "dup"), str(tmp_path / "cur.json")]), capsys.readouterr().err)
    code = main(["compare", str(tmp_path / "cur.json"), str(tmp_path / "cur.json"), "--speed-tol", "1.5"])
    _one_line_error(code, capsys.readouterr().err)


def test_a_crash_is_an_internal_error_not_a_regression(monkeypatch, tmp_path, capsys):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(report, "compare_records", boom)
    code, out, err = _compare(tmp_path, capsys, _record(), _record())
    assert code == EXIT_USAGE and "Traceback" in err
    assert err.strip().splitlines()[-1] == "litestage-bench: internal error: RuntimeError: boom"
