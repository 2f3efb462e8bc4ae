"""Throughput timing at batch B: the chunk loop interleaves dense and the method with the order
alternating, the summary's factors multiply exactly to the speedup, computed tokens count the rows
that wait in a batch, and a bad --timing is one line."""
from __future__ import annotations

import json
import math
import sys

import pytest
from tiny_reasoner import QUESTIONS, STATIC, reasoner

from litestage_bench.core.errors import UserError
from litestage_bench.engine.plan import DENSE, SkipPlan
from litestage_bench.evaluation.throughput import chunks_of, time_chunks
from litestage_bench.records.throughput import parse_timing, throughput_summary


def _entry(seconds: float, generated: int, computed: int, first: bool = True) -> dict:
    stages = {s: {"seconds": seconds / 3, "generated": generated, "computed": computed, "cost_fraction": 1.0}
              for s in ("recall", "analyze", "summarize")}
    return {"first": first, "stages": stages}


def test_the_factors_multiply_to_the_speedup_and_name_the_waiting():
    # the method generates half the tokens, but its rows wait: it computes 3/4 of dense's row-steps
    dense = [[_entry(12.0, 40, 48), _entry(12.6, 40, 48)] for _ in range(4)]
    method = [[_entry(9.0 + 0.1 * c, 20, 36), _entry(9.3, 20, 36)] for c in range(4)]
    out = throughput_summary(dense, method, batch=8)
    total = out["decomposition"]["total"]
    assert math.isclose(total["speedup"], total["token_factor"] * total["waiting_factor"] * total["per_token_factor"])
    assert math.isclose(total["token_factor"], 2.0) and math.isclose(total["waiting_factor"], (48 / 40) / (36 / 20))
    assert out["throughput_speedup"] == total["speedup"] and out["ci95_refused"] is None
    low, high = out["throughput_speedup_ci95"]
    assert low < out["throughput_speedup"] < high
    assert out["n_chunks"] == 4 and out["rounds"] == 2 and out["batch_size"] == 8
    assert math.isclose(out["items_per_hour_dense"], 8 * 3600 / 12.3)


def test_fewer_than_three_chunks_give_no_interval():
    out = throughput_summary([[_entry(10, 5, 5)]] * 2, [[_entry(9, 5, 5)]] * 2, batch=8)
    assert out["ci95_refused"] and out["throughput_speedup_ci95"] is None


def test_timing_mode_parses_or_says_what_to_pass():
    assert parse_timing("latency") == 1 and parse_timing("batch=8") == 8
    for bad in ("batch=1", "batch=x", "throughput", "batch="):
        with pytest.raises(UserError, match="batch=B"):
            parse_timing(bad)


@pytest.fixture(scope="module")
def tiny(model, tokenizer):
    return reasoner(model, tokenizer)


def test_chunks_are_timed_interleaved_with_the_order_alternating(tiny):
    qs = QUESTIONS[1:] * 3  # two-option questions: 6 items, chunks of 2
    chunks = chunks_of(qs + QUESTIONS[:1], 2)
    assert [len(c) for c in chunks] == [2, 2, 2]  # the odd item left over is dropped
    lines = []
    out = time_chunks(tiny, {"dense": (DENSE, {}), "method": (STATIC, {})}, chunks, rounds=2, log=lines.append)
    # progress: the warm-up, every round but a chunk's last, and each chunk's seconds
    assert len(lines) == 1 + 3 * 1 + 3 and "warm-up" in lines[0] and "round 1/2 done" in lines[1]
    assert [len(r) for r in out["dense"]] == [2, 2, 2]
    firsts = [[e["first"] for e in rounds] for rounds in out["dense"]]
    assert firsts == [[True, False], [False, True], [True, False]]  # alternates by chunk and by round
    for rounds in out["dense"] + out["method"]:
        for e in rounds:
            for s in e["stages"].values():
                assert s["seconds"] > 0 and s["computed"] >= s["generated"] >= 2 and 0 < s["cost_fraction"] <= 1
    assert all(e["stages"]["recall"]["cost_fraction"] < 1 for rounds in out["method"] for e in rounds)
    # the A/A pipeline: an empty plan runs dense's computation, token for token
    same = time_chunks(tiny, {"dense": (DENSE, {}), "same": (SkipPlan(name="dense-copy"), {})}, chunks[:1], rounds=1)
    assert same["dense"][0][0]["stages"] == {s: {**v, "seconds": same["dense"][0][0]["stages"][s]["seconds"]}
                                             for s, v in same["same"][0][0]["stages"].items()}


def test_computed_tokens_count_the_rows_that_wait(tiny):
    """At batch 1 a stage computes what it generates; in a batch, recall keeps its finished rows (the
    next stage continues their cache), so it computes rows x the longest row's steps."""
    items, stages = tiny.time_batch(QUESTIONS[:1], DENSE)
    assert all(s["computed"] == s["generated"] for s in stages.values())
    items, stages = tiny.time_batch(QUESTIONS, DENSE)
    recall = stages["recall"]
    longest = max(it.tokens["recall"] for it in items)
    assert recall["generated"] == sum(it.tokens["recall"] for it in items)
    assert recall["computed"] == len(QUESTIONS) * longest


@pytest.mark.parametrize("record, needle", [
    ("results/comparison/smollm2-135m_obqa_dense.json", "dense's own record"),
    ("results/grid/records/smollm2-135m-obqa-sleb-k2.json", "not made by `litestage-bench run`"),
])
def test_retime_refuses_what_it_cannot_re_time_in_one_line(record, needle, tmp_path, capsys):
    from pathlib import Path

    from test_cli import assert_one_line_error, run_cli
    root = Path(__file__).resolve().parents[1]
    code, _, err = run_cli(["retime-throughput", str(root / record), "--out-dir", str(tmp_path)], capsys)
    assert_one_line_error(code, err, needle)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, needle", [
    (["--timing", "batch=8", "--limit", "16"], "needs 32 items, the run has 16"),
    (["--timing", "batch=1"], "is not a timing mode"),
])
def test_run_refuses_a_throughput_timing_it_cannot_do_before_loading(args, needle, capsys, tmp_path, monkeypatch):
    from test_cli import assert_one_line_error, run_cli

    from litestage_bench.evaluation import runner
    monkeypatch.setattr(runner.Session, "open", lambda *a, **k: pytest.fail("the model was loaded"))
    code, _, err = run_cli(["run", "--bench", "obqa", "--method", "unified", "--k", "2", "--chunks", "4",
                            "--out", str(tmp_path / "r.json"), *args], capsys)
    assert_one_line_error(code, err, needle)
    assert not list(tmp_path.iterdir())


def test_the_aa_check_defaults_to_the_main_jobs_timing():
    from litestage_bench.grid import cases
    from litestage_bench.studies import aa_timing
    assert (aa_timing.MAIN_TIMED, aa_timing.MAIN_ROUNDS) == (cases.MAIN_TIMED, cases.MAIN_ROUNDS)


def test_a_group_of_records_is_retimed_against_one_dense_in_the_same_rounds(tiny_folder, tmp_path, capsys,
                                                                            monkeypatch):
    """Two records of one model and items, re-timed with --group 2: each chunk round solves the chunk
    once with dense and once with each method (3 solves, not 4), and both copies hold that same dense."""
    from test_cli import run_cli

    from litestage_bench.evaluation.reasoner import Reasoner
    monkeypatch.chdir(tmp_path)
    common = ["run", "--model", str(tiny_folder), "--bench", "obqa", "--limit", "4", "--batch-size", "2",
              "--timed", "1", "--rounds", "1", "--max-new-tokens", "2,2,2"]
    for method, k in (("unified", "1"), ("early_exit", "1")):
        args = [*common, "--method", method, "--k", k, "--out", f"{method}.json"]
        monkeypatch.setattr(sys, "argv", ["litestage-bench", *args])  # the record keeps its command line
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
    solves = []
    real = Reasoner.time_batch
    monkeypatch.setattr(Reasoner, "time_batch", lambda self, *a, **k: solves.append(1) or real(self, *a, **k))
    code, _, err = run_cli(["retime-throughput", "unified.json", "early_exit.json", "--timing", "batch=2",
                            "--chunks", "2", "--chunk-rounds", "1", "--group", "2", "--out-dir", "out"], capsys)
    assert code == 0, err
    assert len(solves) == 3 + 2 * 1 * 3  # warm-up of each pipeline, then 2 chunks x 1 round x 3 pipelines
    copies = {name: json.loads((tmp_path / "out" / f"{name}.json").read_text())["timing"]["throughput"]
              for name in ("unified", "early_exit")}
    assert copies["unified"]["timed_with"] == ["early_exit.json"]
    assert copies["early_exit"]["timed_with"] == ["unified.json"]
    assert copies["unified"]["chunk_rounds"]["dense"] == copies["early_exit"]["chunk_rounds"]["dense"]
    assert copies["unified"]["chunk_rounds"]["method"] != copies["early_exit"]["chunk_rounds"]["method"]


def test_an_interrupted_retime_continues_after_its_finished_chunks(tiny_folder, tmp_path, capsys, monkeypatch):
    """A retime killed in its second chunk keeps the first in OUT/NAME.json.partial.jsonl; the same
    command then times the second chunk only (after its warm-up), the copy holds the kept chunk's
    rounds as they were timed, and the checkpoint goes once the copy is written."""
    from test_cli import run_cli

    from litestage_bench.evaluation.reasoner import Reasoner
    monkeypatch.chdir(tmp_path)
    args = ["run", "--model", str(tiny_folder), "--bench", "obqa", "--limit", "4", "--batch-size", "2", "--timed", "1",
            "--rounds", "1", "--max-new-tokens", "2,2,2", "--method", "unified", "--k", "1", "--out", "unified.json"]
    monkeypatch.setattr(sys, "argv", ["litestage-bench", *args])
    assert run_cli(args, capsys)[0] == 0
    retime = ["retime-throughput", "unified.json", "--timing", "batch=2", "--chunks", "2", "--chunk-rounds", "1",
              "--out-dir", "out"]
    solves = []
    real = Reasoner.time_batch

    def killed_in_chunk_two(self, *a, **k):
        solves.append(1)
        if len(solves) == 2 + 2 + 1:  # warm-up of both pipelines, chunk 1's two solves, then chunk 2
            raise KeyboardInterrupt
        return real(self, *a, **k)
    monkeypatch.setattr(Reasoner, "time_batch", killed_in_chunk_two)
    code, _, _ = run_cli(retime, capsys)
    assert code != 0 and not (tmp_path / "out" / "unified.json").exists()
    kept = tmp_path / "out" / "unified.json.partial.jsonl"
    first_chunk = [json.loads(line)["value"] for line in kept.read_text().splitlines()[1:]]
    assert len(first_chunk) == 1

    solves.clear()
    monkeypatch.setattr(Reasoner, "time_batch", lambda self, *a, **k: solves.append(1) or real(self, *a, **k))
    code, _, err = run_cli(retime, capsys)
    assert code == 0, err
    assert len(solves) == 2 + 2  # warm-up, then chunk 2 only
    rounds = json.loads((tmp_path / "out" / "unified.json").read_text())["timing"]["throughput"]["chunk_rounds"]
    assert [rounds["dense"][0], rounds["method"][0]] == [first_chunk[0]["dense"], first_chunk[0]["unified"]]  # keyed by the record's name
    assert not kept.exists()


def test_an_interrupted_run_keeps_its_finished_throughput_chunks(tiny_folder, tmp_path, capsys, monkeypatch):
    """`run --timing batch=B` killed in its second chunk: the rerun reads the first chunk back from the
    run's checkpoint and times the second only (after its warm-up)."""
    from test_cli import run_cli

    from litestage_bench.evaluation.reasoner import Reasoner
    monkeypatch.chdir(tmp_path)
    args = ["run", "--model", str(tiny_folder), "--bench", "obqa", "--limit", "4", "--batch-size", "2", "--timed", "1",
            "--rounds", "1", "--max-new-tokens", "2,2,2", "--method", "unified", "--k", "1", "--timing", "batch=2",
            "--chunks", "2", "--chunk-rounds", "1", "--out", "unified.json"]
    solves = []
    real = Reasoner.time_batch

    def killed_in_chunk_two(self, *a, **k):
        solves.append(1)
        if len(solves) == 2 + 2 + 1:
            raise KeyboardInterrupt
        return real(self, *a, **k)
    monkeypatch.setattr(Reasoner, "time_batch", killed_in_chunk_two)
    assert run_cli(args, capsys)[0] != 0
    solves.clear()
    monkeypatch.setattr(Reasoner, "time_batch", lambda self, *a, **k: solves.append(1) or real(self, *a, **k))
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert len(solves) == 2 + 2
    assert "1 chunks read back" in err
    cost = json.loads((tmp_path / "unified.json").read_text())["timing"]["accuracy_cost"]  # from the checkpoint too
    assert sum(c["items"] for c in cost["per_cpu"].values()) == 4 and cost["items_without_cost"] == 0


def test_two_records_of_one_name_are_refused_before_any_is_read(tmp_path, capsys):
    """Copies are named by the record's file name (and a group keys its methods by it): two records of
    one name would overwrite each other's copy, or one would drop out of its group."""
    from test_cli import assert_one_line_error, run_cli
    code, _, err = run_cli(["retime-throughput", "a/x.json", "b/x.json", "--out-dir", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "two records are named x.json")
    assert not list(tmp_path.iterdir())


def test_drafted_records_are_retimed_at_batch_b_with_their_answers_checked(tiny_folder, tmp_path, capsys,
                                                                          monkeypatch):
    """The lossless methods' records (selfspec, litestage-spec: drafted stages) go through
    retime-throughput like any other, in one group against one dense: the batch-8 lane's last groups."""
    from test_cli import run_cli
    monkeypatch.chdir(tmp_path)
    draft = {"skip": {"attn": [1], "ffn": [2]}, "k": 3, "min_confidence": None}
    policies = {"selfspec": {"schema_version": 1, "method": "selfspec", "model": str(tiny_folder), "num_layers": 4,
                             "draft": draft},
                "litestage-spec": {"schema_version": 1, "method": "litestage-spec", "model": str(tiny_folder),
                                   "num_layers": 4, "stages": {"recall": {"draft": draft}, "analyze": {"draft": None},
                                                               "summarize": {"draft": {**draft, "k": 2}}}}}
    for method, policy in policies.items():
        (tmp_path / f"{method}-policy.json").write_text(json.dumps(policy))
        args = ["run", "--model", str(tiny_folder), "--bench", "obqa", "--limit", "4", "--batch-size", "2",
                "--timed", "1", "--rounds", "1", "--max-new-tokens", "3,3,3", "--method", method,
                "--policy", f"{method}-policy.json", "--out", f"{method}.json"]
        monkeypatch.setattr(sys, "argv", ["litestage-bench", *args])
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
    code, _, err = run_cli(["retime-throughput", "selfspec.json", "litestage-spec.json", "--timing", "batch=2",
                            "--chunks", "2", "--chunk-rounds", "1", "--group", "2", "--out-dir", "out"], capsys)
    assert code == 0, err
    for method in policies:
        copy = json.loads((tmp_path / "out" / f"{method}.json").read_text())
        throughput = copy["timing"]["throughput"]
        assert throughput["batch_size"] == 2 and math.isfinite(throughput["throughput_speedup"])
        assert copy["items"] == json.loads((tmp_path / f"{method}.json").read_text())["items"]
