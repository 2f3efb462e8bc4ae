"""Fast tests for metrics, result records, tables, plots and regression comparison (no models)."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litestage_bench.core.errors import UserError
from litestage_bench.records import metrics, results, timing
from litestage_bench.records.report import (STAGES, compare_records, pareto_plot, policy_name, results_table,
                                            versus_table)
from litestage_bench.records.results import (SCHEMA_VERSION, ItemResult, ResultRecord, build_record, load_record,
                                             load_records, record_from_dict, record_to_dict, write_record,
                                             write_text_atomic)

# ----------------------------------------------------------------------------- metrics


def test_wilson_hand_checked_case():
    acc, (lo, hi) = metrics.accuracy_ci95([True] * 50 + [False] * 50)
    assert acc == 0.5
    assert lo == pytest.approx(0.404, abs=1e-3)
    assert hi == pytest.approx(0.596, abs=1e-3)


def test_wilson_narrows_with_n():
    widths = []
    for n in (10, 100, 1000):
        _, (lo, hi) = metrics.accuracy_ci95([True] * (n // 2) + [False] * (n - n // 2))
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]


def test_wilson_extremes_and_empty():
    acc, (lo, hi) = metrics.accuracy_ci95([True] * 20)
    assert acc == 1.0 and hi == 1.0 and 0.8 < lo < 1.0
    acc, (lo, hi) = metrics.accuracy_ci95([False] * 20)
    assert acc == 0.0 and lo == 0.0 and 0.0 < hi < 0.2
    acc, (lo, hi) = metrics.accuracy_ci95([])
    assert math.isnan(acc) and math.isnan(lo) and math.isnan(hi)


@given(st.lists(st.booleans(), min_size=1, max_size=500))
def test_wilson_contains_estimate(correct):
    acc, (lo, hi) = metrics.accuracy_ci95(correct)
    assert acc == sum(correct) / len(correct)
    assert 0.0 <= lo <= acc <= hi <= 1.0


def test_paired_difference_counts_and_ci():
    a = [True, True, True, False, True, False, True, True]
    b = [True, False, False, False, True, True, False, True]
    d = metrics.paired_difference(a, b)
    assert d["n"] == 8
    assert d["a_only"] == 3 and d["b_only"] == 1
    assert d["mean_diff"] == pytest.approx(2 / 8)
    lo, hi = d["ci95"]
    assert lo < d["mean_diff"] < hi
    # hand check: diffs = [0,1,1,0,0,-1,1,0], sample sd = sqrt(((3*.75^2)+(1.25^2)+4*.25^2)/7)
    sd = math.sqrt((3 * 0.75**2 + 1.25**2 + 4 * 0.25**2) / 7)
    t975_7df = 2.364624  # Student t 0.975 quantile with 7 degrees of freedom (printed tables)
    assert hi - d["mean_diff"] == pytest.approx(t975_7df * sd / math.sqrt(8), rel=1e-6)


def test_paired_difference_identical_and_length_mismatch():
    d = metrics.paired_difference([True, False, True], [True, False, True])
    assert d["mean_diff"] == 0 and d["ci95"] == (0.0, 0.0) and d["a_only"] == d["b_only"] == 0
    with pytest.raises(ValueError):
        metrics.paired_difference([True], [True, False])


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=2, max_size=200))
def test_paired_difference_ci_contains_mean(pairs):
    a, b = zip(*pairs)
    d = metrics.paired_difference(a, b)
    lo, hi = d["ci95"]
    assert -1.0 <= lo <= d["mean_diff"] <= hi <= 1.0
    assert d["mean_diff"] == pytest.approx((d["a_only"] - d["b_only"]) / d["n"])


def test_median_and_speedup():
    assert metrics.median([3.0, 1.0, 2.0]) == 2.0
    assert metrics.median([1.0, 2.0, 3.0, 4.0]) == 2.5
    assert math.isnan(metrics.median([]))


# ----------------------------------------------------------------------------- records


def make_item(i: int, correct: bool, latency: float = 1.0, rule: str = "letter") -> ItemResult:
    return ItemResult(
        id=f"q{i}",
        answer="A",
        prediction="A" if correct else "B",
        rule=rule,
        correct=correct,
        latency_s=latency,
        stage_latency_s={"recall": latency * 0.5, "analyze": latency * 0.3, "summarize": latency * 0.2},
        tokens={"recall": 10 + i, "analyze": 20, "summarize": 5},
        outputs={"recall": "facts", "analyze": "thoughts", "summarize": "A"},
        predictions_by_rule={"regex": "A" if correct else None, "letter": "A" if correct else "B"},
        executed_cost_fraction={"recall": 1.0, "analyze": 0.5 + 0.1 * (i % 2), "summarize": 0.8},
    )


def make_record(
    method: str = "litestage",
    correct: list[bool] | None = None,
    speedup: float | None = 1.5,
    cost: float | None = None,
    model: str = "smollm2-135m",
    benchmark: str = "obqa",
    policy: dict | str | None = None,
) -> ResultRecord:
    correct = correct if correct is not None else [True, False, True, True]
    items = [make_item(i, c, latency=1.0 + i) for i, c in enumerate(correct)]
    if cost is not None:
        for it in items:
            it.executed_cost_fraction = {s: cost for s in STAGES}
    return build_record(
        model=model,
        benchmark=benchmark,
        split="eval",
        method=method,
        policy=policy if policy is not None else {"name": f"{method}-p"},
        answer_rule="letter",
        items=items,
        command="litestage-bench run --model smollm2-135m --bench obqa --method " + method,
        config={"limit": len(items)},
        speedup=speedup,
    )


def test_build_record_aggregates():
    rec = make_record(correct=[True, False, True, True])
    assert rec.schema_version == SCHEMA_VERSION
    assert rec.n == 4
    assert rec.accuracy == 0.75
    assert rec.accuracy_ci95 == metrics.accuracy_ci95([True, False, True, True])[1]
    assert rec.latency_s == pytest.approx(2.5)  # median of 1, 2, 3, 4
    assert list(rec.stage_latency_s) == list(STAGES)
    assert rec.stage_latency_s["recall"] == pytest.approx(1.25)
    assert rec.tokens["recall"] == pytest.approx(11.5)  # mean of 10..13
    assert rec.tokens["analyze"] == 20
    assert rec.executed_cost_fraction["analyze"] == pytest.approx(0.55)
    assert rec.executed_cost_fraction["summarize"] == pytest.approx(0.8)
    assert rec.answer_rule_counts == {"letter": 4}
    assert rec.accuracy_by_rule == {"regex": 0.75, "letter": 0.75}
    assert rec.speedup == 1.5
    assert rec.machine["python"] and "torch" in rec.machine and "cpu" in rec.machine
    assert rec.created.endswith("+00:00")


def test_build_record_rule_counts_and_by_rule():
    items = [make_item(0, True, rule="regex"), make_item(1, False, rule="none"), make_item(2, True)]
    items[1].predictions_by_rule = {"regex": None, "letter": " a "}  # letter rule would have been right
    rec = build_record(
        model="m", benchmark="csqa", split="eval", method="dense", policy=None, answer_rule="regex",
        items=items, command="cmd", config={},
    )
    assert rec.answer_rule_counts == {"regex": 1, "letter": 1, "none": 1}
    assert list(rec.answer_rule_counts) == ["regex", "letter", "none"]
    assert rec.accuracy_by_rule["regex"] == pytest.approx(2 / 3)
    assert rec.accuracy_by_rule["letter"] == pytest.approx(1.0)


def test_build_record_empty_items_is_nan():
    rec = build_record(
        model="m", benchmark="obqa", split="eval", method="dense", policy=None, answer_rule="letter",
        items=[], command="cmd", config={},
    )
    assert rec.n == 0 and math.isnan(rec.accuracy) and math.isnan(rec.latency_s)


def test_json_round_trip(tmp_path: Path):
    rec = make_record()
    path = write_record(tmp_path / "sub" / "dir" / "rec.json", rec)
    assert path.exists()
    back = load_record(path)
    assert back == rec
    assert isinstance(back.accuracy_ci95, tuple)
    assert isinstance(back.items[0], ItemResult)
    assert record_from_dict(record_to_dict(rec)) == rec


def test_json_nan_is_strict_null(tmp_path: Path):
    rec = build_record(
        model="m", benchmark="obqa", split="eval", method="dense", policy=None, answer_rule="letter",
        items=[], command="cmd", config={},
    )
    path = write_record(tmp_path / "empty.json", rec)
    text = path.read_text()
    assert "NaN" not in text
    data = json.loads(text)
    assert data["accuracy"] is None
    back = load_record(path)
    assert math.isnan(back.accuracy) and math.isnan(back.accuracy_ci95[0])


def test_atomic_write_leaves_no_partial_file(tmp_path: Path, monkeypatch):
    target = tmp_path / "rec.json"

    def broken_dump(obj, fh, **kw):
        fh.write('{"schema_version": 1, "model": ')  # half a record, then fail
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(results.json, "dump", broken_dump)
    with pytest.raises(RuntimeError):
        write_record(target, make_record())
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []

    # an existing file keeps its old content
    target.write_text("old content")
    with pytest.raises(RuntimeError):
        write_record(target, make_record())
    assert target.read_text() == "old content"
    assert [p.name for p in tmp_path.iterdir()] == ["rec.json"]


def test_write_text_atomic(tmp_path: Path):
    path = write_text_atomic(tmp_path / "t" / "table.md", "| a |\n")
    assert path.read_text() == "| a |\n"
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in path.parent.iterdir()] == ["table.md"]


def test_a_folder_of_records_leaves_out_the_campaign_file_beside_them(tmp_path: Path):
    """results/headline and results/batch8 hold a campaign (studies.ledger) beside their records."""
    write_record(tmp_path / "m_obqa_unified-k4.json", make_record())
    (tmp_path / "campaign_m.json").write_text(json.dumps({"pieces": []}))
    assert [r.method for r in load_records(tmp_path)] == [make_record().method]


def test_load_record_missing_file(tmp_path: Path):
    path = tmp_path / "nope.json"
    with pytest.raises(UserError) as err:
        load_record(path)
    assert str(path) in str(err.value) and "--out" in str(err.value)


def test_load_record_bad_json(tmp_path: Path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(UserError) as err:
        load_record(path)
    assert str(path) in str(err.value) and "JSON" in str(err.value)


def test_load_record_missing_key(tmp_path: Path):
    data = record_to_dict(make_record())
    del data["accuracy"]
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as err:
        load_record(path)
    assert str(path) in str(err.value) and "'accuracy'" in str(err.value)


def test_load_record_missing_item_key_and_wrong_schema(tmp_path: Path):
    data = record_to_dict(make_record())
    del data["items"][1]["correct"]
    path = tmp_path / "item.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"'correct' in items\[1\]"):
        load_record(path)

    data = record_to_dict(make_record())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="schema_version 99"):
        load_record(path)

    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="JSON object"):
        load_record(path)


# ----------------------------------------------------------------------------- report


def test_policy_name():
    assert policy_name({"name": "ls-0.9"}) == "ls-0.9"
    assert policy_name("policies/obqa_smol.json") == "obqa_smol"
    assert policy_name(None) == "-"
    assert policy_name({"threshold": 0.9}) == "-"


def test_results_table_rows():
    recs = [make_record("litestage", speedup=1.4), make_record("dense", speedup=None, cost=1.0)]
    table = results_table(recs)
    lines = table.splitlines()
    assert len(lines) == 4  # header, separator, two rows
    assert "dense" in lines[2] and "litestage" in lines[3]  # sorted by method
    assert "0.750 [" in table
    assert "1.40x" in table and " - " in lines[2]
    assert "1.00/0.55/0.80" in table and "1.00/1.00/1.00" in table
    assert "letter (letter 4)" in table
    assert "litestage-p" in table


def test_versus_table_pairs_items_and_counts_swaps():
    # vs right on q0-q1; the other record right on q1-q9 and on q10, which vs never saw
    vs = make_record("litestage", correct=[True] * 2 + [False] * 8, speedup=2.0)
    other = make_record("shortgpt", correct=[False] + [True] * 10, speedup=1.0)
    elsewhere = make_record("unified", benchmark="csqa")
    lines = versus_table([vs, other, elsewhere], vs).splitlines()
    assert len(lines) == 3 and "shortgpt" in lines[2]  # vs itself and the other benchmark are left out
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[3] == "10"  # paired on the 10 shared ids
    assert cells[4] == "0.900 (0.200)"
    assert cells[5].endswith("(+8/-1)")
    assert cells[6] == f"{20 / 512:.3f}"  # exact McNemar, 8 vs 1 discordant: 2 * P(X <= 1 | 9, 1/2)
    assert cells[7] == "0.100"  # predictions differ exactly where correctness does
    assert cells[8] == "0.50x"
    with pytest.raises(UserError):
        versus_table([elsewhere], vs)


def test_pareto_plot_writes_png(tmp_path: Path):
    recs = [
        make_record("dense", speedup=None),
        make_record("litestage", speedup=1.4),
        make_record("flexidepth", speedup=None),  # skipped: no speedup and not dense
        make_record("litestage", speedup=1.2, benchmark="csqa"),
    ]
    path = pareto_plot(recs, tmp_path / "plots" / "pareto.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["pareto.png"]


def test_pareto_plot_nothing_to_plot(tmp_path: Path):
    with pytest.raises(UserError):
        pareto_plot([make_record("flexidepth", speedup=None)], tmp_path / "p.png")


def test_compare_identical_passes():
    recs = [make_record("dense", speedup=None), make_record("litestage")]
    report, regressed = compare_records(recs, recs)
    assert not regressed
    assert "REGRESSION" not in report and "no regression" in report
    assert "+0.000 [+0.000, +0.000]" in report  # paired CI on the same ids


def test_compare_flags_accuracy_drop():
    base = [make_record(correct=[True] * 8)]
    cur = [make_record(correct=[True] * 4 + [False] * 4)]
    report, regressed = compare_records(base, cur)
    assert regressed
    assert "REGRESSION: accuracy" in report
    assert "-0.500" in report and "(+0/-4)" in report


def test_compare_flags_speed_drop_and_tolerates_small_change():
    report, regressed = compare_records([make_record(speedup=2.0)], [make_record(speedup=1.7)])
    assert regressed and "REGRESSION: speed" in report and "-15.0%" in report
    report, regressed = compare_records([make_record(speedup=2.0)], [make_record(speedup=1.9)])
    assert not regressed


def test_compare_speed_regression_needs_the_whole_ci_below_the_bar():
    # 30% below 2.0 is 1.4: a point of 1.3 whose CI reaches 1.5 is noise; one whose CI ends at 1.35 is not
    ref = [make_record(speedup=2.0)]
    noisy = dataclasses.replace(make_record(speedup=1.3), speedup_ci95=(1.1, 1.5))
    slow = dataclasses.replace(make_record(speedup=1.3), speedup_ci95=(1.2, 1.35))
    report, regressed = compare_records(ref, [noisy], speed_tol=0.3)
    assert not regressed and "-35.0%" in report and "1.30x [1.10, 1.50]" in report
    report, regressed = compare_records(ref, [slow], speed_tol=0.3)
    assert regressed and "REGRESSION: speed" in report


def test_compare_plan_change_new_and_missing_cases():
    base = [make_record(cost=1.0), make_record("dense", speedup=None)]
    cur = [make_record(cost=0.6), make_record("flexidepth")]
    report, regressed = compare_records(base, cur)
    assert regressed  # the reference's dense case did not run
    assert "plan changed" in report and "analyze 1.00->0.60" in report
    assert "REGRESSION: missing case" in report and "/dense/" in report
    assert "Only in current" in report and "/flexidepth/" in report
    _, regressed = compare_records(base[:1], cur)  # a new case alone is not a regression
    assert not regressed


def test_compare_flags_accuracy_outside_the_reference_ci_either_way():
    base = [make_record(correct=[True] * 10 + [False] * 10)]  # 0.5, Wilson CI about [0.30, 0.70]
    for k, bad in ((11, False), (7, False), (5, True), (17, True)):
        _, regressed = compare_records(base, [make_record(correct=[True] * k + [False] * (20 - k))])
        assert regressed == bad, k


def test_compare_flags_agreement_outside_the_reference_ci():
    # equal accuracy, but the current run changed every wrong answer: agreement 1.0 -> 0.5
    dense = [make_item(i, i % 2 == 0) for i in range(12)]
    common = dict(model="smollm2-135m", benchmark="obqa", split="eval", method="litestage", policy={"name": "ls"},
                  answer_rule="letter", command="cmd", config={}, speedup=1.5, dense_items=dense)
    agree = build_record(items=[dataclasses.replace(it) for it in dense], **common)
    disagree = build_record(items=[it if it.correct else dataclasses.replace(it, prediction="C") for it in dense],
                            **common)
    assert agree.accuracy == disagree.accuracy and disagree.fidelity["agreement"] == 0.5
    report, regressed = compare_records([agree], [disagree])
    assert regressed and "REGRESSION: agreement" in report and "REGRESSION: accuracy" not in report
    assert not compare_records([agree], [agree])[1]


def test_compare_duplicate_records_is_user_error():
    with pytest.raises(UserError):
        compare_records([make_record(), make_record()], [])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40))
def test_compare_with_itself_never_regresses(correct):
    rec = make_record(correct=correct)
    _, regressed = compare_records([rec], [dataclasses.replace(rec)])
    assert not regressed


def test_rules_table_shows_each_rule_and_the_one_step_answer():
    from litestage_bench.records.report import policy_name, rules_table
    rec = make_record("dense", speedup=1.0)
    rec.extra["one_step_accuracy"] = {"letter": {"accuracy": 0.25}, "cloze": {"accuracy": 0.5}}
    table = rules_table([rec])
    row = table.splitlines()[2]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == policy_name(rec.policy)  # tells apart several policies of one method
    assert cells[5:8] == [format(rec.accuracy_by_rule[r], ".3f") if r in rec.accuracy_by_rule else "-"
                          for r in ("regex", "letter", "cloze")]
    assert cells[8:10] == ["0.250", "0.500"]


# ----------------------------------------------------------------------------- comparison with dense


def make_pair(nan_latency_ids: tuple[int, ...] = (), wobble: float = 0.0) -> tuple[ResultRecord, ResultRecord]:
    """A dense record and a method record on the same 8 items: the method is 2x faster, flips
    q0 right -> wrong and q5 wrong -> right, and has no timing for ``nan_latency_ids``. Every item's
    ratio is exactly 2 (no spread: no CI) unless ``wobble``: the method's seconds then go x e^(+-wobble)
    on alternate items, so the speedup stays 2 and its CI has a width."""
    dense_correct = [True, True, True, False, True, False, True, True]
    method_correct = [False, True, True, False, True, True, True, True]
    dense = [make_item(i, c, latency=2.0 + 0.1 * i) for i, c in enumerate(dense_correct)]
    method = [make_item(i, c, latency=(1.0 + 0.05 * i) * math.exp(wobble * (-1) ** i))
              for i, c in enumerate(method_correct)]
    for it in dense + method:
        it.option_scores = {"letter": [1.0, 0.0, 0.0, 0.0]}
    method[1].option_scores = {"letter": [0.0, 1.0, 0.0, 0.0]}
    method[2].outputs = dict(method[2].outputs, recall="other facts")
    for i in nan_latency_ids:
        method[i].latency_s, method[i].stage_latency_s = math.nan, {}
    common = dict(model="smollm2-135m", benchmark="obqa", split="eval", answer_rule="letter", command="cmd",
                  config={}, chance=0.25, dtype="float32", threads=1, device="cpu")
    dense_rec = build_record(method="dense", policy=None, items=dense, speedup=1.0, **common)
    method_rec = build_record(method="litestage", policy={"name": "ls"}, items=method, dense_items=dense,
                              timing={"timed_ids": [it.id for it in method if math.isfinite(it.latency_s)]},
                              noise_floor={"dtype": "float32", "threads": 1, "answer_flip_rate": 0.0, "n_items": 100},
                              **common)
    return dense_rec, method_rec


def test_build_record_compares_with_dense():
    dense_rec, rec = make_pair(wobble=0.1)
    assert rec.schema_version == 2
    assert dense_rec.fidelity is None and dense_rec.mcnemar_p is None and dense_rec.speedup == 1.0
    assert dense_rec.speedup_ci95 is None and dense_rec.retention is None
    f = rec.fidelity
    assert (f["n"], f["correct_to_wrong"], f["wrong_to_correct"], f["changed"]) == (8, 1, 1, 2)
    assert f["agreement"] == pytest.approx(6 / 8)
    assert f["answer_kl_n"] == 8 and f["answer_kl"] > 0 and f["answer_kl_median"] == 0.0
    assert f["stage_exact_match"]["recall"] == pytest.approx(7 / 8)
    assert rec.items[0].fidelity["flip"] == "correct_to_wrong" and rec.items[5].fidelity["flip"] == "wrong_to_correct"
    assert rec.mcnemar_p == 1.0  # one flip each way
    assert rec.retention == pytest.approx(1.0)  # same accuracy as dense (6/8)
    assert rec.speedup == pytest.approx(timing.paired_speedup(dense_rec.items, rec.items)["speedup"])
    assert rec.speedup_decomposition["total"]["speedup"] == pytest.approx(rec.speedup)
    lo, hi = rec.speedup_ci95
    assert lo < rec.speedup < hi
    assert rec.timing["speedup_interval"] == timing.SPEEDUP_INTERVAL and "speedup_ci95_refused" not in rec.timing
    # dense's side of every pair is kept, so the record alone gives back its speedup and CI
    assert list(rec.timing["dense_rounds"]) == [it.id for it in dense_rec.items]
    assert rec.timing["dense_rounds"]["q3"] == timing.rounds_of(dense_rec.items[3])
    assert (rec.dtype, rec.threads, rec.device, rec.chance) == ("float32", 1, "cpu", 0.25)


def test_build_record_refuses_a_ci_without_spread():
    _, rec = make_pair()  # every item exactly 2x
    assert rec.speedup == pytest.approx(2.0) and all(math.isnan(x) for x in rec.speedup_ci95)
    assert rec.timing["speedup_ci95_refused"] == "no spread across items"
    assert _cells(results_table([rec]), 2)["speedup [95% CI]"] == "2.00x [no CI: no spread across items]"


def test_build_record_uses_only_items_timed_on_both_sides():
    dense_rec, rec = make_pair(nan_latency_ids=(0, 1, 2))
    timed = range(3, 8)
    expected = metrics.median([2.0 + 0.1 * i for i in timed]) / metrics.median([1.0 + 0.05 * i for i in timed])
    assert rec.speedup == pytest.approx(expected)
    assert rec.latency_s == pytest.approx(metrics.median([1.0 + 0.05 * i for i in timed]))
    assert math.isfinite(rec.stage_latency_s["recall"])
    assert rec.timing["timed_ids"] == [f"q{i}" for i in timed]


def test_build_record_explicit_speedup_wins_and_mismatched_items_fail():
    dense_rec, _ = make_pair()
    items = [make_item(i, True) for i in range(8)]
    rec = build_record(model="m", benchmark="obqa", split="eval", method="x", policy=None, answer_rule="letter",
                       items=items, command="c", config={}, dense_items=dense_rec.items, speedup=1.7)
    assert rec.speedup == 1.7 and rec.speedup_ci95 is None and rec.fidelity["n"] == 8
    with pytest.raises(UserError):
        build_record(model="m", benchmark="obqa", split="eval", method="x", policy=None, answer_rule="letter",
                     items=items[:5], command="c", config={}, dense_items=dense_rec.items)


def test_json_round_trip_keeps_the_comparison(tmp_path: Path):
    _, rec = make_pair(nan_latency_ids=(4,), wobble=0.1)
    back = load_record(write_record(tmp_path / "rec.json", rec))
    assert isinstance(back.speedup_ci95, tuple)
    assert math.isnan(back.items[4].latency_s) and back.items[4].stage_latency_s == {}
    back.items[4].latency_s = rec.items[4].latency_s = 0.0  # nan != nan; everything else must be equal
    assert back == rec
    single = dataclasses.replace(rec, speedup_ci95=(math.nan, math.nan), retention=None)
    again = record_from_dict(json.loads(json.dumps(record_to_dict(single))))
    assert all(math.isnan(x) for x in again.speedup_ci95) and again.retention is None


def test_schema_1_records_still_load():
    data = record_to_dict(make_record())
    new_fields = ("dtype", "threads", "device", "chance", "speedup_ci95", "fidelity", "retention",
                  "mcnemar_p", "noise_floor", "timing")
    for key in new_fields:
        del data[key]
    for it in data["items"]:
        del it["option_scores"], it["fidelity"]
    data["schema_version"] = 1
    rec = record_from_dict(data)
    assert rec.schema_version == 1 and rec.fidelity is None and rec.timing == {} and rec.items[0].option_scores == {}
    assert "-" in results_table([rec])


def _cells(table: str, row: int) -> dict[str, str]:
    lines = table.splitlines()
    headers = [c.strip() for c in lines[0].strip("|").split("|")]
    return dict(zip(headers, (c.strip() for c in lines[row].strip("|").split("|"))))


def test_results_table_shows_the_comparison_columns():
    dense_rec, rec = make_pair(wobble=0.1)
    table = results_table([rec, dense_rec])
    dense_row, method_row = _cells(table, 2), _cells(table, 3)
    lo, hi = rec.speedup_ci95
    assert method_row["speedup [95% CI]"] == f"{rec.speedup:.2f}x [{lo:.2f}, {hi:.2f}]"
    assert method_row["agreement"] == "0.750"
    assert method_row["flips -c2w/+w2c"] == "-1/+1"
    assert method_row["answer KL"] == format(rec.fidelity["answer_kl"], ".4f")
    assert method_row["McNemar p"] == "1.000"
    assert method_row["retention"] == "1.00"
    assert dense_row["speedup [95% CI]"] == "1.00x"
    assert [dense_row[k] for k in ("agreement", "flips -c2w/+w2c", "answer KL", "McNemar p", "retention")] == ["-"] * 5
    assert table.splitlines()[-1] == "- noise floor (float32, 1 thread): 0.0% answer flips over 100 items"


def test_noise_floor_note_and_small_p():
    _, rec = make_pair()
    rec.noise_floor = {"dtype": "bfloat16", "threads": 4, "answer_flip_rate": 0.02, "n_items": 50}
    rec.mcnemar_p = 0.0004
    table = results_table([rec])
    assert table.endswith("- noise floor (bfloat16, 4 threads): 2.0% answer flips over 50 items")
    assert _cells(table, 2)["McNemar p"] == "<0.001"
    rec.noise_floor = {"dtype": "float32", "measured": False, "note": "not measured on this device"}
    assert results_table([rec]).endswith("- noise floor (float32, 1 thread): not measured on this device")
    rec.noise_floor = {"dtype": "float32", "threads": "1 (reference) vs 2", "answer_flip_rate": 0.0}
    assert results_table([rec]).endswith("- noise floor (float32, threads 1 (reference) vs 2): 0.0% answer flips")


def test_compare_shows_the_current_comparison_with_dense():
    dense_rec, rec = make_pair()
    report, regressed = compare_records([dense_rec, rec], [dense_rec, rec])
    assert not regressed
    lines = [ln for ln in report.splitlines() if ln.startswith("|")]
    row = _cells("\n".join(lines), 3)  # sorted: dense, litestage
    assert row["agreement cur"] == "0.750" and row["flips cur"] == "-1/+1" and row["McNemar p cur"] == "1.000"
    assert row["speedup cur [95% CI]"].startswith(f"{rec.speedup:.2f}x [")
    assert _cells("\n".join(lines), 2)["flips cur"] == "-"
    assert "noise floor (float32, 1 thread)" in report


def test_policy_name_labels_searched_policies_by_target_and_ablation():
    base = {"name": "litestage", "target": {"kind": "accuracy", "tolerance_points": 4.0}, "early_exit_enabled": True,
            "options": {"budget": "stagewise", "granularity": "sublayer", "ranking": "cosine", "early_exit": True}}
    assert policy_name(base) == "litestage-acc4"
    assert policy_name({**base, "early_exit_enabled": False}) == "litestage-acc4-no-exit"
    assert policy_name({**base, "target": {"kind": "agreement", "min_agreement": 0.9},
                        "options": {**base["options"], "budget": "uniform", "granularity": "layer"}}) == \
        "litestage-agree0.9-uniform-layer"
    assert policy_name({"name": "unified-k4"}) == "unified-k4"


def test_the_one_step_pass_prints_progress_and_scores_both_rules(capsys):
    from types import SimpleNamespace

    from litestage_bench.evaluation import runner
    items = [SimpleNamespace(answer="A" if i % 2 else "B") for i in range(30)]
    reasoner = SimpleNamespace(one_step=lambda q: {"letter": "A", "cloze": q.answer})
    scored = runner.one_step_accuracy(reasoner, items, "m obqa dense")
    assert scored["letter"]["accuracy"] == 0.5 and scored["cloze"]["accuracy"] == 1.0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "one-step" in ln]
    assert [ln.split("]")[1].split()[0] for ln in lines] == ["25/30", "30/30"]
    assert lines[0].startswith("[m obqa dense one-step]") and "s/question" in lines[0]


def test_no_committed_result_names_a_machine_path():
    """results/ holds no absolute path of the machine that made it (a home, a cache, a checkout); a
    scratch folder under /tmp that a recorded command was given (--out /tmp/...) may stand."""
    import re
    root = Path(__file__).resolve().parent.parent / "results"
    machine = re.compile(r"(?<![\w.~])/(root|home|work|Users)/")
    named = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".md", ".txt",
                                                                                                ".jsonl")
             and machine.search(p.read_text(encoding="utf-8", errors="replace"))]
    assert not named, f"machine paths in {named[:5]}"


def test_the_campaigns_run_checkpoints_are_committed_and_no_others():
    """A 1.5B record takes longer than a working period: its `run` checkpoint lands in the repository
    (results/large/), so the next period's clone resumes it; checkpoints elsewhere stay local."""
    import shutil
    import subprocess
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0
    assert not ignored("results/large/qwen2.5-coder-1.5b_obqa_unified-k4_float32.json.partial.jsonl")
    assert ignored("results/baselines/smollm2-135m_obqa_unified-k4.json.partial.jsonl")
