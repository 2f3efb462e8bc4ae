"""The campaign ledger, rendered from records, checkpoints and search rows."""
from __future__ import annotations

import json

from test_cli import assert_one_line_error
from test_checkpoint import _item

from litestage_bench.evaluation.checkpoint import RunCheckpoint
from litestage_bench.studies import ledger

ASSUME = {"accuracy_s_per_item": 30, "batch1_s_per_question": 60, "source": "assumed"}


def _campaign(tmp_path, pieces):
    path = tmp_path / "campaign.json"
    path.write_text(json.dumps({"model": "m", "assumptions": ASSUME, "pieces": pieces}))
    return str(path)


def test_states_rates_and_hours_left_come_from_what_the_repository_holds(tmp_path, capsys):
    landed = tmp_path / "landed.json"
    rounds = [{"stage_s": {"recall": 100.0, "analyze": 200.0}}, {"stage_s": {"recall": 300.0}}]
    landed.write_text(json.dumps({"timing": {"accuracy_cost": {"per_cpu": {"CPU one": {"items": 4, "seconds": 40.0}},
                                                               "items_without_cost": 0},
                                             "dense_rounds": {"a": rounds}},
                                  "items": [{"id": "a", "timing_rounds": rounds}, {"id": "b"}]}))
    partial = tmp_path / "partial.json"
    cp = RunCheckpoint(f"{partial}.partial.jsonl", {"run": 1})
    cp.put("batch", "a,b", [_item("a"), _item("b")], {"seconds": 5000.0, "cpu": "CPU two"})
    cp.put("timed x2 rounds on cpu", "a", [_item("a", 3000.0), _item("a", 3000.0)])  # method and dense, 3000 s each
    rows = tmp_path / "rows"
    rows.mkdir()
    (rows / "dense-0123.json").write_text(json.dumps({"kind": "dense", "rows_version": 1, "key": {}, "value": {
        "items": [], "means": {}, "cost": {"per_cpu": {"CPU one": {"batches": 1, "items": 8, "seconds": 7200.0,
                                                                    "cpu_seconds": 7000.0}}}}}))
    pieces = [{"piece": "landed", "record": str(landed), "items": 4, "timed": 2},
              {"piece": "partial", "record": str(partial), "items": 4, "timed": 2},
              {"piece": "to do", "record": str(tmp_path / "none.json"), "items": 4, "timed": 2},
              {"piece": "search", "rows": str(rows), "policy": str(tmp_path / "p.json"), "estimate_hours": 5},
              {"piece": "second search", "rows": str(rows), "policy": str(tmp_path / "q.json"), "estimate_hours": 3},
              {"piece": "table", "done_when": str(landed), "estimate_hours": 1}]
    before = partial.with_name("partial.json.partial.jsonl").read_text()
    assert ledger.main([_campaign(tmp_path, pieces)]) == 0
    assert partial.with_name("partial.json.partial.jsonl").read_text() == before  # read, never rewritten
    rows_of = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
               for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert rows_of["landed"][0] == "landed" and rows_of["landed"][2] == "10.0 (CPU one)" and float(rows_of["landed"][4]) == 0
    assert float(rows_of["landed"][3]) == round((40 + 2 * 600) / 3600, 2)  # accuracy, then both sides' timed rounds
    # 2 of 4 items left at 2500 s per item, 1 of 2 timed questions at its measured 3000 s (not the assumed 60):
    # 2 x 2500 + 1 x 2 rounds x 2 sides x 3000
    assert rows_of["partial"][0].startswith("partial: 2/4 accuracy items, 1/2 timed questions, 3000 s per batch-1")
    assert rows_of["partial"][2] == "2500.0 (CPU two)" and float(rows_of["partial"][4]) == round(17000 / 3600, 1)
    assert float(rows_of["partial"][3]) == round((5000 + 2 * 3000 * 2) / 3600, 2)
    assert rows_of["to do"][0] == "to do" and float(rows_of["to do"][4]) == round((4 * 30 + 2 * 2 * 2 * 60) / 3600, 1)
    # the folder's two hours go on its first search, and off its estimate
    assert float(rows_of["search"][3]) == 2.0 and float(rows_of["search"][4]) == 3.0
    assert rows_of["second search"][3] == "-" and float(rows_of["second search"][4]) == 3.0
    assert rows_of["table"][0] == "landed"


def test_a_group_timed_together_reads_its_own_checkpoint(tmp_path, capsys):
    """A retime-latency piece: no accuracy items, k + 1 sides, its timed questions in the group's
    checkpoint (not beside its record)."""
    group = tmp_path / "first.json.together.partial.jsonl"
    cp = RunCheckpoint(str(group), {"group": 1})
    cp.put("timed x2 rounds on cpu", "a", [_item("a", 100.0), _item("a", 100.0), _item("a", 100.0)])
    pieces = [{"piece": "group", "record": str(tmp_path / "last.json"), "checkpoint": str(group), "items": 0,
               "timed": 3, "rounds": 2, "sides": 3}]
    assert ledger.main([_campaign(tmp_path, pieces)]) == 0
    row = next([c.strip() for c in line.split("|")[2:-1]] for line in capsys.readouterr().out.splitlines()
               if line.startswith("| group"))
    assert row[0].startswith("partial: 0/0 accuracy items, 1/3 timed questions, 100 s per batch-1 question")
    assert float(row[3]) == round(3 * 100 * 2 / 3600, 2)  # 3 sides x 2 rounds at 100 s
    assert float(row[4]) == round(2 * 2 * 3 * 100 / 3600, 1)  # 2 questions left x 2 rounds x 3 sides


def test_the_marked_block_is_replaced_and_a_ledger_without_markers_is_refused(tmp_path, capsys):
    campaign = _campaign(tmp_path, [{"piece": "table", "done_when": str(tmp_path / "x"), "estimate_hours": 1}])
    ledger_md = tmp_path / "ledger.md"
    ledger_md.write_text(f"# prose\n\n{ledger.BEGIN}\nold table\n{ledger.END}\n\nmore prose\n")
    assert ledger.main([campaign, "--into", str(ledger_md)]) == 0
    text = ledger_md.read_text()
    assert text.startswith("# prose\n") and text.endswith(f"{ledger.END}\n\nmore prose\n") and "old table" not in text
    assert "| table" in text and "0 of 1 pieces landed" in text
    capsys.readouterr()
    (tmp_path / "plain.md").write_text("no markers\n")
    assert_one_line_error(ledger.main([campaign, "--into", str(tmp_path / "plain.md")]), capsys.readouterr().err,
                          "no single")
    (tmp_path / "bad.json").write_text(json.dumps({"pieces": []}))
    assert_one_line_error(ledger.main([str(tmp_path / "bad.json")]), capsys.readouterr().err, "unreadable or incomplete")


def test_next_gives_a_lanes_first_piece_not_landed_whose_predecessors_have(tmp_path, capsys):
    landed = tmp_path / "landed.json"
    landed.write_text("{}")
    pieces = [{"piece": "done", "lane": "a", "command": "echo done", "record": str(landed)},
              {"piece": "waits", "lane": "a", "command": "echo waits", "record": str(tmp_path / "w.json"),
               "after": ["calibration"]},
              {"piece": "calibration", "lane": "b", "command": "echo calibration", "done_when": str(tmp_path / "c")},
              {"piece": "free", "lane": "a", "command": "echo free", "record": str(tmp_path / "f.json")}]
    campaign = _campaign(tmp_path, pieces)
    assert ledger.main([campaign, "--next", "a"]) == 0 and capsys.readouterr().out == "echo free\n"
    (tmp_path / "c").write_text("")  # the calibration landed: the waiting piece comes first again
    assert ledger.main([campaign, "--next", "a"]) == 0 and capsys.readouterr().out == "echo waits\n"
    assert ledger.main([campaign, "--next", "b"]) == 0 and capsys.readouterr().out == ""


def test_the_worker_runs_a_lanes_pieces_in_turn_and_stops_at_one_that_does_not_land(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "scripts" / "campaign_worker.sh"
    first, second, never = (tmp_path / n for n in ("1.json", "2.json", "never.json"))
    pieces = [{"piece": "one", "lane": "a", "command": f"echo {{}} > {first}", "record": str(first)},
              {"piece": "two", "lane": "a", "command": f"echo {{}} > {second}", "record": str(second), "after": ["one"]}]
    env = {"PATH": "/usr/bin:/bin", "LITESTAGE_VENV": str(Path(sys.executable).parent.parent)}
    done = subprocess.run(["bash", str(script), _campaign(tmp_path, pieces), "a"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and first.exists() and second.exists(), done.stderr
    assert done.stderr.strip().endswith("nothing left to run")
    stuck = [{"piece": "stuck", "lane": "a", "command": "true", "record": str(never)}]
    done = subprocess.run(["bash", str(script), _campaign(tmp_path, stuck), "a"], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "did not land: true" in done.stderr
