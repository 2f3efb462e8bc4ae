"""Batch-1 latency of several records against one dense (`retime-latency`), after `run --accuracy-only`."""
from __future__ import annotations

import json
import shlex
import shutil
import sys

import pytest

from litestage_bench.evaluation.reasoner import Reasoner

COMMON = ["--bench", "obqa", "--limit", "4", "--batch-size", "2", "--max-new-tokens", "2,2,2"]
METHODS = (("unified", "1"), ("early_exit", "1"))


@pytest.fixture(scope="module")
def made_once(tiny_folder, tmp_path_factory):
    """A dense record, and two methods' --accuracy-only records compared with it (in acc/), made once."""
    from litestage_bench.cli import main
    folder = tmp_path_factory.mktemp("accuracy_only")
    model = ["--model", str(tiny_folder)]
    runs = [["run", *model, *COMMON, "--method", "dense", "--timed", "1", "--rounds", "1", "--out", "dense.json"]]
    runs += [["run", *model, *COMMON, "--method", method, "--k", k, "--accuracy-only", "--dense-record", "dense.json",
              "--out", f"acc/{method}.json"] for method, k in METHODS]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for args in runs:
            mp.setattr(sys, "argv", ["litestage-bench", *args])  # the record keeps its command line
            assert main(args) == 0
    return folder


@pytest.fixture
def accuracy_only(made_once, tmp_path, monkeypatch):
    """A copy of those records in this test's own folder, the working directory."""
    shutil.copytree(made_once, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _count_solves(monkeypatch, kill_at: int | None = None) -> list:
    solves, real = [], Reasoner.solve

    def counted(self, *a, **k):
        solves.append(1)
        if kill_at is not None and len(solves) == kill_at:
            raise KeyboardInterrupt
        return real(self, *a, **k)
    monkeypatch.setattr(Reasoner, "solve", counted)
    return solves


RETIME = ["retime-latency", "acc/unified.json", "acc/early_exit.json", "--timed", "2", "--rounds", "1",
          "--out-dir", "out"]


def test_an_accuracy_only_record_has_answers_and_no_timing(accuracy_only):
    rec = json.loads((accuracy_only / "acc" / "unified.json").read_text())
    assert rec["timing"]["n_timed"] == 0 and rec["speedup"] is None
    assert len(rec["items"]) == 4 and rec["fidelity"]["n"] == 4
    assert sum(c["items"] for c in rec["timing"]["accuracy_cost"]["per_cpu"].values()) == 4


def test_records_timed_together_share_one_dense_and_keep_their_answers(accuracy_only, capsys, monkeypatch):
    """Two methods timed together: per question and round, dense and each method solve once (3
    pipelines, not 2 x 2), and both records pair with the same dense rounds; each keeps its answers
    and accuracy cost and names, as its command, its own `run --answers-from`."""
    from test_cli import run_cli
    solves = _count_solves(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["litestage-bench", *RETIME])
    code, _, err = run_cli(RETIME, capsys)
    assert code == 0, err
    assert len(solves) == 3 + 2 * 1 * 3  # one warm-up per pipeline, then 2 questions x 1 round x 3 pipelines
    recs = {m: json.loads((accuracy_only / "out" / f"{m}.json").read_text()) for m, _ in METHODS}
    assert recs["unified"]["timing"]["dense_rounds"] == recs["early_exit"]["timing"]["dense_rounds"]
    assert recs["unified"]["timing"]["timed_with"] == ["early_exit"]
    for method, _ in METHODS:
        acc = json.loads((accuracy_only / "acc" / f"{method}.json").read_text())
        rec = recs[method]
        assert rec["speedup"] is not None and rec["timing"]["n_timed"] == 2
        assert [it["prediction"] for it in rec["items"]] == [it["prediction"] for it in acc["items"]]
        assert rec["timing"]["accuracy_cost"] == acc["timing"]["accuracy_cost"]
        words = shlex.split(rec["command"])
        assert words[:2] == ["litestage-bench", "run"] and "--accuracy-only" not in words
        assert words[words.index("--answers-from") + 1] == f"acc/{method}.json"
        assert words[words.index("--out") + 1] == f"out/{method}.json"
        assert rec["extra"]["timing_command"].split()[:2] == ["litestage-bench", "retime-latency"]
    assert not list((accuracy_only / "out").glob("*.partial.jsonl"))


def test_an_interrupted_group_continues_after_its_timed_questions(accuracy_only, capsys, monkeypatch):
    """Killed in the second question, the same command times only that one (after the warm-ups)."""
    from test_cli import run_cli
    _count_solves(monkeypatch, kill_at=3 + 3 + 1)  # warm-ups, question 1, then question 2's first solve
    code, _, _ = run_cli(RETIME, capsys)
    assert code != 0 and not (accuracy_only / "out" / "unified.json").exists()
    assert (accuracy_only / "out" / "unified.json.together.partial.jsonl").exists()
    solves = _count_solves(monkeypatch)
    code, _, err = run_cli(RETIME, capsys)
    assert code == 0, err
    assert len(solves) == 3 + 3 and "resuming: 1 timed questions" in err


@pytest.mark.parametrize("records, needle", [
    (["dense.json"], "dense's own record"),
    (["acc/unified.json", "dense.json"], "dense's own record"),
])
def test_what_cannot_be_timed_together_is_a_one_line_error(accuracy_only, records, needle, capsys):
    from test_cli import assert_one_line_error, run_cli
    code, _, err = run_cli(["retime-latency", *records, "--out-dir", "out"], capsys)
    assert_one_line_error(code, err, needle)
    assert not (accuracy_only / "out").exists()


def test_records_of_other_items_are_refused_before_the_model_loads(accuracy_only, capsys, monkeypatch):
    from test_cli import assert_one_line_error, run_cli
    rec = json.loads((accuracy_only / "acc" / "early_exit.json").read_text())
    rec["command"] = rec["command"].replace("--limit 4", "--limit 2")  # as if run on fewer items
    (accuracy_only / "acc" / "fewer.json").write_text(json.dumps(rec))
    monkeypatch.setattr("litestage_bench.evaluation.runner.Session.open", None)  # a load would fail loudly
    code, _, err = run_cli(["retime-latency", "acc/unified.json", "acc/fewer.json", "--out-dir", "out"], capsys)
    assert_one_line_error(code, err, "differ in model, benchmark, items, settings or dense record")


def test_in_place_is_refused(accuracy_only, capsys):
    from test_cli import assert_one_line_error, run_cli
    code, _, err = run_cli(["retime-latency", "acc/unified.json", "--out-dir", "acc"], capsys)
    assert_one_line_error(code, err, "would be overwritten by its own timed copy")


def test_a_record_whose_costs_depend_on_its_batch_must_share_the_groups_batch_size():
    """AdaSkip's per-token FFN rule counts its batch's rows: at another batch size than the group's
    (its first record's) the re-run batch could not reproduce its costs, so the group stops first."""
    from types import SimpleNamespace

    from litestage_bench.core.errors import UserError
    from litestage_bench.engine.plan import SkipPlan, SkipSet, StagePlan
    from litestage_bench.studies.latency_retime import check_batch_sizes

    class _Fixed:
        def __init__(self, name, plan):
            self.name, self._plan = name, plan

        def plan(self, facts):
            return self._plan
    static = _Fixed("sleb", SkipPlan.uniform(StagePlan.static(SkipSet.of(attn=[1])), ("recall", "analyze", "summarize"),
                                           "static"))
    dynamic = _Fixed("adaskip", SkipPlan({"analyze": StagePlan(dynamic_ffn=object())}))

    def entry(name, batch, method):
        return (f"{name}.json", None, SimpleNamespace(batch_size=batch), method)
    check_batch_sizes([entry("a", 8, static), entry("b", 16, static), entry("c", 8, dynamic)], facts=None)
    with pytest.raises(UserError, match="c.json ran at batch 16, its group at batch 8"):
        check_batch_sizes([entry("a", 8, static), entry("b", 8, static), entry("c", 16, dynamic)], facts=None)
