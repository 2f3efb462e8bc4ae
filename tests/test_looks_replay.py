"""The looks replay: run on a finished search's own rows with the search's own look count, it
reproduces every stop the search made; the threshold sweep leaves out the thresholds below a
sweep's first meeting one; more looks never measure a candidate on more items than its search did
where the search's stop was a test."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from litestage_bench.studies import looks_replay
from litestage_bench.studies.search_cost import cost, load_policy

ROOT = Path(__file__).resolve().parents[1]
POLICY = "results/policies/v2/smollm2-135m_obqa_litestage-agree90.json"


@pytest.fixture(scope="module")
def policy():
    return load_policy(str(ROOT / POLICY))  # its rows are named relative to the repository: the tests chdir there


def test_the_searchs_own_looks_reproduce_its_stops(policy, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = looks_replay.replay(policy, POLICY, policy["options"]["looks"], threshold_sweep=False)
    measured = {c["label"]: c for c in policy["candidates"]}
    assert len(out["candidates"]) == cost(policy)["candidates"]  # distinct plans, dense left out
    assert out["stage_runs"] == cost(policy)["stage_runs"]
    for r in out["candidates"]:
        stopped = measured[r.label]["stopped"]
        assert (r.n, r.why) == (stopped["n"], stopped["why"]), r.label
        assert r.stage_runs == measured[r.label]["stage_runs"]


def test_the_threshold_sweep_leaves_out_the_thresholds_below_the_first_meeting_one(policy, monkeypatch):
    monkeypatch.chdir(ROOT)
    full = {r.label for r in looks_replay.replay(policy, POLICY, 4, threshold_sweep=False)["candidates"]}
    cut = {r.label for r in looks_replay.replay(policy, POLICY, 4, threshold_sweep=True)["candidates"]}
    assert full - cut == {"analyze exit <= 0.1965", "summarize exit <= 0.642"}


def test_more_looks_stop_a_tested_candidate_no_later(policy, monkeypatch):
    monkeypatch.chdir(ROOT)
    four = {r.label: r for r in looks_replay.replay(policy, POLICY, 4, threshold_sweep=False)["candidates"]}
    for r in looks_replay.replay(policy, POLICY, 12, threshold_sweep=False)["candidates"]:
        if four[r.label].why == "futility":
            assert r.n <= four[r.label].n and r.decision == "clearly misses", r.label


def test_a_policy_without_rows_is_one_line(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"candidates": [], "chosen": {}, "target": {}, "search_cost": {}}))
    assert looks_replay.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names no rows" in err
