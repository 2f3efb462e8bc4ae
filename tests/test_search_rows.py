"""The LiteStage search's rows in the repository: resume on a fresh clone and another CPU, validation
of rows read back, and the sweep report with its audit."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from types import SimpleNamespace

import pytest
from tiny_reasoner import calibration_splits, reasoner, split_loader

from litestage_bench.cli import main
from litestage_bench.core.errors import UserError
from litestage_bench.methods import litestage, search_rows
from litestage_bench.methods.litestage import CandidateMeter, SearchOptions

REAL_TIMING = CandidateMeter._timing  # the fixture fakes it; the progress test times for real
OPTS = dict(target="agreement", min_agreement=0.5, limit=6, timed=2, batch_size=3, max_skip=2, patience=1,
            harm_items=2)


def _fake_timing(self, plan, callbacks):
    """Timing that depends on the plan only, so that two searches on other CPUs decide alike."""
    skipped = sum(len(p.decode.attn) + len(p.decode.ffn) for p in plan.stages.values())
    return {"speedup": 1.0 + 0.1 * skipped + 0.05 * len(callbacks), "speedup_ci95": (1.0, 2.0),
            "speedup_rounds": [], "latency_s": 1.0, "stage_latency_s": {"recall": 0.3, "analyze": 0.5, "summarize": 0.2},
            "timing_cpu": litestage.machine_info().get("cpu"), "timing_seconds": 0.0}


@pytest.fixture
def searcher(model, tokenizer, monkeypatch):
    monkeypatch.setattr(litestage, "load_split", split_loader(calibration_splits()))
    monkeypatch.setattr(CandidateMeter, "_timing", _fake_timing)
    r = reasoner(model, tokenizer)
    def run(store, cpu: str, home=None, log=lambda m: None, **options) -> dict:
        # the model's folder as each machine has it: under its own home, named by the weights' hash
        source = str((home or store.parent / "home1") / "models" / "tiny-0123abcd")
        session = SimpleNamespace(reasoner=lambda bench, cfg, data_dir=None: r, executor=r.ex,
                                  loaded=SimpleNamespace(name="tiny", source=source, dtype="float32", numerics="float32"))
        monkeypatch.setattr(litestage, "machine_info", lambda: {"cpu": cpu})
        return litestage.search(session, "obqa", SearchOptions(**{**OPTS, **options}), r.cfg, store_dir=store, log=log)
    run.reasoner = r
    return run


def test_a_fresh_clone_on_another_cpu_resumes_with_no_answer_measured_and_the_same_decision(searcher, tmp_path):
    first = searcher(tmp_path / "machine1", "CPU one")
    assert first["search_cost"]["candidates_measured"] >= 2
    # the rows that landed, on a fresh clone of another machine (no stage memo, no other files)
    shutil.copytree(tmp_path / "machine1", tmp_path / "clone")
    again = searcher(tmp_path / "clone", "CPU two", home=tmp_path / "home2")
    cost = again["search_cost"]
    assert cost["candidates_retimed"] == cost["candidates_measured"] > 0  # every answer read, only re-timed
    assert (again["stages"], again["early_exit"]) == (first["stages"], first["early_exit"])
    assert {c["answers_cpu"] for c in again["candidates"]} == {"CPU one"}
    assert {c["timing_cpu"] for c in again["candidates"] if c.get("timing_cpu")} == {"CPU two"}
    # nothing in the rows or the policy names a machine path
    for path in (tmp_path / "clone").iterdir():
        assert str(tmp_path) not in path.read_text()
    assert again["search_cost"]["rows"]["dir"] == (tmp_path / "clone").as_posix()


def test_the_dense_row_serves_every_answer_rule_and_is_answered_by_the_searchs_own(searcher, tmp_path):
    first = searcher(tmp_path / "rows", "CPU one")
    dense = next(p for p in (tmp_path / "rows").iterdir() if p.name.startswith("dense-"))
    items = json.loads(dense.read_text())["value"]["items"]
    searcher.reasoner.cfg = replace(searcher.reasoner.cfg, answer_rule="letter")
    lines = []
    other = searcher(tmp_path / "rows", "CPU one", log=lines.append)
    assert any("calibration items from" in line and dense.name in line for line in lines)  # read, not measured
    letter = sum(it["predictions_by_rule"]["letter"] == it["answer"] for it in items) / len(items)
    assert other["calibration"]["dense_accuracy"] == pytest.approx(letter)
    assert first["calibration"]["dense_accuracy"] == pytest.approx(
        sum(it["predictions_by_rule"]["cloze"] == it["answer"] for it in items) / len(items))


def test_answer_rule_auto_is_chosen_on_the_dense_pass_and_every_candidate_answers_by_it(searcher, tmp_path,
                                                                                        monkeypatch):
    """`--answer-rule auto`: the rule is chosen on the dense row's every-rule answers before any
    candidate; dense's calibration accuracy, the candidates' rows and the policy's reasoner settings
    (what its records run with) all take it. The choice is forced to letter here (the tiny model's
    rules may tie); most_accurate_rule itself is tested in test_answer_rule.py."""
    monkeypatch.setattr(litestage, "most_accurate_rule", lambda items, own: "letter")
    lines = []
    policy = searcher(tmp_path / "rows", "CPU one", log=lines.append, choose_rule=True)
    dense = next(p for p in (tmp_path / "rows").iterdir() if p.name.startswith("dense-"))
    items = json.loads(dense.read_text())["value"]["items"]
    by_rule = {rule: sum(it["predictions_by_rule"][rule] == it["answer"] for it in items) / len(items)
               for rule in items[0]["predictions_by_rule"]}
    choice = policy["answer_rule_choice"]
    assert (choice["rule"], choice["default"]) == ("letter", "cloze") and choice["accuracy_by_rule"] == by_rule
    assert policy["reasoner_config"]["answer_rule"] == "letter"
    assert policy["calibration"]["dense_accuracy"] == pytest.approx(by_rule["letter"])
    assert any(line.startswith("[search] answer rule letter") for line in lines)
    rows = [json.loads(p.read_text()) for p in (tmp_path / "rows").glob("answers-*.json")]
    assert rows and {r["key"]["config"]["answer_rule"] for r in rows} == {"letter"}
    # the same search with the rule named reads those rows: nothing is measured again
    searcher.reasoner.cfg = replace(searcher.reasoner.cfg, answer_rule="letter")
    named = searcher(tmp_path / "rows", "CPU one")
    assert named["search_cost"]["candidates_measured"] == 0 and named["answer_rule_choice"] is None
    assert named["stages"] == policy["stages"]


def _cut_off_in_the_second_dense_batch(searcher, store, monkeypatch) -> None:
    """A search on "CPU one" whose machine is taken away while its second dense batch is measured."""
    real, calls = litestage.probe_sums, []

    def cut_off(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(litestage, "probe_sums", cut_off)
    with pytest.raises(KeyboardInterrupt):
        searcher(store, "CPU one")
    monkeypatch.setattr(litestage, "probe_sums", real)


def test_a_dense_pass_cut_off_after_a_batch_continues_from_its_batch_row(searcher, tmp_path, monkeypatch):
    whole = searcher(tmp_path / "whole", "CPU one")
    _cut_off_in_the_second_dense_batch(searcher, tmp_path / "cut", monkeypatch)
    assert [p.name.split("-")[1] for p in (tmp_path / "cut").iterdir()] == ["batch"]  # the first batch landed
    lines = []
    again = searcher(tmp_path / "cut", "CPU two", log=lines.append)
    assert any("3/6 items (read back)" in line for line in lines) and any("6/6 items (measured)" in line for line in lines)
    assert (again["importance"], again["stages"], again["early_exit"]) == (whole["importance"], whole["stages"],
                                                                        whole["early_exit"])
    assert again["exit_thresholds_swept"] == whole["exit_thresholds_swept"]  # the confidences of both batches
    assert not [p for p in (tmp_path / "cut").iterdir() if p.name.startswith("dense-batch-")]  # in the dense row now


def test_a_search_resumed_after_its_dense_pass_takes_dense_from_the_dense_row(searcher, tmp_path, monkeypatch):
    """The machine is taken away once the dense row landed: the next process has no stage memo, and
    dense's own answer rows (the reference) come from the dense row, equal to a dense run, not from
    running the dense pass again."""
    whole = searcher(tmp_path / "whole", "CPU one")
    real = CandidateMeter.measure

    def cut_off(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(CandidateMeter, "measure", cut_off)
    with pytest.raises(KeyboardInterrupt):
        searcher(tmp_path / "cut", "CPU one")
    monkeypatch.setattr(CandidateMeter, "measure", real)
    assert [p.name.split("-")[0] for p in (tmp_path / "cut").iterdir() if p.suffix == ".json"].count("answers") == 0
    again = searcher(tmp_path / "cut", "CPU one")
    dense_path = next(p for p in (tmp_path / "cut").iterdir() if p.name.startswith("dense-"))
    dense_items = search_rows.dense_row_items(search_rows.load_row(dense_path, "dense")["value"], dense_path, "cloze")
    reference = [search_rows.load_row(p, "answers") for p in (tmp_path / "cut").glob("answers-*.json")]
    reference = [r for r in reference if r["label"] == "dense"]
    assert reference and all(r["value"]["stage_runs"] == 0 for r in reference)
    for r in reference:
        lo, hi = r["key"]["chunk"]
        assert r["value"]["items"] == search_rows.item_columns(dense_items[lo:hi])
    assert (again["stages"], again["early_exit"]) == (whole["stages"], whole["early_exit"])
    assert [c["accuracy"] for c in again["candidates"]] == [c["accuracy"] for c in whole["candidates"]]


def test_the_importance_from_the_first_items_shares_the_dense_row(searcher, tmp_path, monkeypatch):
    whole = searcher(tmp_path / "rows", "CPU one")
    monkeypatch.setitem(OPTS, "importance_items", 3)  # the first batch of 3
    first = searcher(tmp_path / "rows", "CPU one")
    names = sorted(p.name.split("-")[0] for p in (tmp_path / "rows").iterdir() if not p.name.startswith("answers"))
    assert names.count("dense") == 1 and names.count("importance") == 2  # one dense pass, two importances
    assert first["importance"] != whole["importance"] and first["options"]["importance_items"] == 3


def test_a_malformed_row_stops_the_search_with_a_one_line_error(searcher, tmp_path):
    searcher(tmp_path, "CPU one")
    row = sorted(tmp_path.glob("answers-*.json"))[-1]
    data = json.loads(row.read_text())
    del data["value"]["correct"]
    row.write_text(json.dumps(data))
    with pytest.raises(UserError, match=f"search row .*{row.name}: missing correct"):
        searcher(tmp_path, "CPU one")
    row.write_text("{not json")
    with pytest.raises(UserError, match="not readable JSON"):
        searcher(tmp_path, "CPU one")


def test_rows_hold_per_item_answers_hashes_tokens_and_costs(searcher, tmp_path):
    searcher(tmp_path, "CPU one")
    rows = [search_rows.load_row(p, "answers") for p in sorted(tmp_path.glob("answers-*.json"))]
    for row in rows:
        items = row["value"]["items"]
        n = row["value"]["n"]
        assert len(items["ids"]) == len(items["prediction"]) == len(items["correct"]) == n
        assert sum(items["correct"]) == row["value"]["correct"]
        for stage in ("recall", "analyze", "summarize"):
            assert len(items["tokens"][stage]) == len(items["cost"][stage]) == len(items["output_sha"][stage]) == n
        assert "code" not in row["key"] and "canary" in row["key"] and "cpu" not in row["key"]  # float32: exact


def test_report_search_prints_the_sweep_and_audits_the_policy(searcher, tmp_path, capsys):
    policy = searcher(tmp_path / "rows", "CPU one")
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    assert main(["report", "--search", str(tmp_path / "rows"), "--policy", str(tmp_path / "policy.json")]) == 0
    out = capsys.readouterr().out
    assert "dense" in out and "meets" in out
    n = len(policy["candidates"])
    assert f"Audit: {n} of {n} policy candidates reproduce from their rows" in out
    # a row edited after the search no longer reproduces its candidate
    row = next(p for p in (tmp_path / "rows").glob("answers-*.json") if "#skip=1" in p.read_text())
    data = json.loads(row.read_text())
    data["value"]["changed"] += 1
    row.write_text(json.dumps(data))
    main(["report", "--search", str(tmp_path / "rows"), "--policy", str(tmp_path / "policy.json")])
    assert "differ from their rows" in capsys.readouterr().out
    assert main(["report", "--search", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a folder" in err[0]


def test_the_dense_pass_keeps_its_cost_and_the_report_sums_the_rows_seconds_by_cpu(searcher, tmp_path, monkeypatch,
                                                                                    capsys):
    """The dense row holds its batches' seconds per CPU (a pass cut off on one machine and finished
    on another counts both), and `report --search` sums every row's seconds by piece and CPU."""
    _cut_off_in_the_second_dense_batch(searcher, tmp_path / "rows", monkeypatch)
    searcher(tmp_path / "rows", "CPU two")
    row = next(p for p in (tmp_path / "rows").glob("dense-*.json") if not p.name.startswith("dense-batch-"))
    dense = json.loads(row.read_text())["value"]["cost"]
    assert {cpu: c["items"] for cpu, c in dense["per_cpu"].items()} == {"CPU one": 3, "CPU two": 3}
    assert dense["batches_without_cost"] == 0 and all(c["seconds"] > 0 for c in dense["per_cpu"].values())
    assert main(["report", "--search", str(tmp_path / "rows")]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Measured so far"))
    assert "answers" in line and "dense" in line and "CPU one" in line and "CPU two" in line


class _RankingPredictor:
    """A latency fit's stand-in: predicts the fake timing's speedup from the skipped units."""

    half_width = 0.01

    def predict(self, sets, rules, chunks, dense, reuse_kv=True):
        assert chunks and all(c and c["ids"] for c in chunks)  # the accuracy pass's per-item columns
        return 1.0 + 0.1 * sum(len(s.attn) + len(s.ffn) for s in sets.values()) + 0.05 * sum(map(bool, rules.values()))

    def describe(self):
        return {"fit": "fake", "half_width": self.half_width}


def test_a_search_with_a_latency_fit_times_dense_the_finalists_and_the_chosen_setting(searcher, tmp_path, monkeypatch):
    monkeypatch.setattr(litestage, "find_predictor", lambda option, group, bench, log: _RankingPredictor())
    policy = searcher(tmp_path, "CPU one")
    assert policy["speed_ranking"] == {"fit": "fake", "half_width": 0.01}
    dense, *rows = policy["candidates"]
    assert dense["speedup"] == 1.0 and policy["chosen"]["speedup"] is not None
    going = [r for r in rows if r["test"]["decision"] != "clearly misses"]
    assert going and all(r["predicted_speedup"] is not None for r in going)
    timed = [r for r in rows if r["speedup"] is not None]
    assert all(r["test"]["decision"] == "meets" or r["n_skip"] == 0 or r.get("threshold", 0) is None for r in timed)
    assert policy["search_cost"]["candidates_timed"] == len(timed) + 2  # and dense, and the chosen setting


def test_a_sweeps_finalists_are_timed_together_against_one_dense(searcher, tmp_path, monkeypatch):
    """Finalists of a sweep with no timing row yet share the dense solves of each timed question
    (k + 1 pipelines per call, not k calls of 2), and each one's speedup is its pairing with them."""
    predictor = _RankingPredictor()
    predictor.half_width = 0.5  # every meeting candidate is a finalist
    monkeypatch.setattr(litestage, "find_predictor", lambda option, group, bench, log: predictor)
    monkeypatch.setattr(CandidateMeter, "_timing", REAL_TIMING)
    real, calls = litestage.time_items, []

    def spy(reasoner, pipelines, items, *args, **kwargs):
        out = real(reasoner, pipelines, items, *args, **kwargs)
        calls.append((list(pipelines), out))
        return out
    monkeypatch.setattr(litestage, "time_items", spy)
    policy = searcher(tmp_path, "CPU one", min_agreement=0.0)
    groups = [(names, out) for names, out in calls if len(names) > 2]
    assert groups, [names for names, _ in calls]
    grouped = [c for c in policy["candidates"] if c.get("timed_with")]  # a kept one also heads the next sweep
    plans = {json.dumps([c["sets"], c["exits"]]) for c in grouped}
    assert len(plans) == sum(len(names) - 1 for names, _ in groups)
    for names, out in groups:
        assert names[0] == "dense"
        speedups = {round(litestage.paired_speedup(out["dense"], out[n])["speedup"], 12) for n in names[1:]}
        assert speedups <= {round(c["speedup"], 12) for c in grouped}
    timing_rows = [search_rows.load_row(p, "timing") for p in tmp_path.glob("timing-*.json")]
    assert sum(bool(r["value"].get("timed_with")) for r in timing_rows) == len(plans)


def test_a_candidates_chunk_prints_progress_once_a_quiet_interval_has_passed(searcher, tmp_path, monkeypatch, capsys):
    """A candidate's chunk runs silent for less than CHUNK_QUIET_SECONDS (each line waits that long
    after the last), and prints its batches once they take longer (a 1.5B chunk: half an hour)."""
    searcher(tmp_path / "quiet", "CPU one")
    assert "items 1-" not in capsys.readouterr().err  # the tiny model's chunks take well under a minute
    monkeypatch.setattr(litestage, "CHUNK_QUIET_SECONDS", 0.0)
    monkeypatch.setattr(CandidateMeter, "_timing", REAL_TIMING)
    searcher(tmp_path / "loud", "CPU one")
    err = capsys.readouterr().err.splitlines()
    lines = [line for line in err if "items 1-" in line]
    assert lines and all(line.startswith("[search ") for line in lines), lines[:3]
    assert any("#skip=" in line and " batch 3] 3/" in line and "s/question" in line for line in lines), lines[:3]
    # a finalist's batch-1 timing too: a line per timed question
    assert any(line.startswith("[search recall #skip=1 timed: 2 pipelines") and "] 1/2 " in line for line in err)
