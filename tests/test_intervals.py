"""The speedup interval's command: recomputing stored records exactly, and the coverage simulation."""
from __future__ import annotations

import json
import math

import pytest

from litestage_bench.records import timing
from litestage_bench.records.results import ItemResult, build_record, load_record, write_record
from litestage_bench.studies import intervals

STAGES = ("recall", "analyze", "summarize")


def _item(i: int, seconds: list[float]) -> ItemResult:
    """An item timed in len(seconds) rounds (these total seconds, split over the stages)."""
    rounds = [{"stage_s": {s: t / 3 for s in STAGES}, "prefill_s": {}, "first": bool((i + r) % 2)}
              for r, t in enumerate(seconds)]
    return ItemResult(id=f"q{i}", answer="A", prediction="A", rule="letter", correct=True,
                      latency_s=sorted(seconds)[len(seconds) // 2], stage_latency_s=dict(rounds[0]["stage_s"]),
                      tokens={s: 10 for s in STAGES}, timing_rounds=rounds)


def _pair(n: int = 6, dense_record: str | None = None):
    """Dense at 2 s and a method near 1 s with per-item and per-round noise, 2 rounds per item."""
    dense = [_item(i, [2.0 * (1 + 0.01 * math.cos(3 * i + r)) for r in range(2)]) for i in range(n)]
    method = [_item(i, [1.0 + 0.07 * math.sin(i + r) for r in range(2)]) for i in range(n)]
    common = dict(model="m", benchmark="obqa", split="eval", answer_rule="letter", command="cmd", config={})
    dense_rec = build_record(method="dense", policy=None, items=dense, speedup=1.0, timing={"rounds": 2}, **common)
    rec = build_record(method="x", policy=None, items=method, dense_items=dense, timing={"rounds": 2},
                       extra={"dense_record": dense_record} if dense_record else None, **common)
    return dense_rec, rec


def _as_before(path) -> dict:
    """The record as if written before the t interval: the old bootstrap's CI, no interval name."""
    data = json.loads(path.read_text())
    # every stage is a third of an item's seconds: the recall stage's ratio is the item's
    means = [sum(math.log(d["stage_s"]["recall"] / m["stage_s"]["recall"]) for d, m in
                 zip(data["timing"]["dense_rounds"][it["id"]], it["timing_rounds"])) / 2 for it in data["items"]]
    data["speedup_ci95"] = list(intervals.percentile_bootstrap_gm_ci95(means))
    del data["timing"]["speedup_interval"]
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data


def test_recompute_gives_the_t_interval_and_changes_nothing_else(tmp_path, capsys):
    dense_rec, rec = _pair()
    path = write_record(tmp_path / "x.json", rec)
    before = _as_before(path)
    expected = timing.paired_speedup(dense_rec.items, rec.items)
    assert intervals.main(["--recompute", str(path), "--dry-run"]) == 0
    assert json.loads(path.read_text()) == before and "dry run" in capsys.readouterr().out
    assert intervals.main(["--recompute", str(path)]) == 0
    after = json.loads(path.read_text())
    assert after["speedup_ci95"] == pytest.approx(list(expected["ci95"]), rel=1e-12)
    assert after["speedup_ci95"] != pytest.approx(before["speedup_ci95"])
    assert after["timing"]["speedup_interval"] == timing.SPEEDUP_INTERVAL
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {"speedup_ci95", "timing"}
    assert {k for k in after["timing"] if after["timing"][k] != before["timing"].get(k)} == {"speedup_interval"}
    assert load_record(path).speedup_ci95 == pytest.approx(expected["ci95"])
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left


def test_recompute_refuses_what_it_cannot_do_exactly(tmp_path, capsys):
    dense_rec, rec = _pair()
    old = write_record(tmp_path / "old.json", rec)
    data = json.loads(old.read_text())
    del data["timing"]["dense_rounds"]  # as every record made before records kept dense's rounds
    old.write_text(json.dumps(data, indent=1) + "\n")
    tampered = write_record(tmp_path / "tampered.json", rec)
    data = json.loads(tampered.read_text())
    data["timing"]["dense_rounds"]["q0"][0]["stage_s"]["analyze"] *= 2
    tampered.write_text(json.dumps(data, indent=1) + "\n")
    dense = write_record(tmp_path / "dense.json", dense_rec)
    texts = {p: p.read_text() for p in (old, tampered, dense)}
    assert intervals.main(["--recompute", str(old), str(tampered), str(dense)]) == 1
    out = capsys.readouterr().out
    assert "dense's interleaved rounds are not stored" in out and "not its stored" in out
    assert "no paired speedup" in out
    assert all(p.read_text() == t for p, t in texts.items())


def test_simulation_writes_the_coverage_table_with_its_command(tmp_path):
    folder = tmp_path / "records"
    dense_path = str(tmp_path / "dense.json")
    dense_rec, rec = _pair(n=8, dense_record=dense_path)
    write_record(dense_path, dense_rec)
    write_record(folder / "x.json", rec)
    out = tmp_path / "coverage.md"
    assert intervals.main(["--simulate", str(folder), "--draws", "50", "--out", str(out)]) == 0
    text = out.read_text()
    assert f"python -m litestage_bench.studies.intervals --simulate {folder} --draws 50 --out {out}" in text
    rows = [line for line in text.splitlines() if line.startswith("| method / dense record")]
    assert [r.split("|")[4].strip() for r in rows] == ["3", "5", "10", "20"]
    assert all(0.0 <= float(r.split("|")[6]) <= 1.0 for r in rows)
    assert any(line.startswith("| first / second") for line in text.splitlines())
    assert not any(line.startswith("| record - record") for line in text.splitlines())  # one record: no pair
    _, other = _pair(n=8)
    write_record(folder / "y.json", other)
    assert intervals.main(["--simulate", str(folder), "--draws", "50", "--out", str(out)]) == 0
    pairs = [line.split("|") for line in out.read_text().splitlines() if line.startswith("| record - record")]
    assert [(r[2].strip(), r[3].strip()) for r in pairs[:1]] == [("1", "8")]  # one pair of 8 items


def test_record_pairs_are_per_item_log_differences_within_a_model_benchmark_and_cpu():
    _, a = _pair(n=6)
    b = build_record(model="m", benchmark="obqa", split="eval", answer_rule="letter", command="cmd", config={},
                     method="y", policy=None, items=[_item(i, [0.5, 0.5]) for i in range(6)], timing={"rounds": 2})
    (values,) = intervals.record_pairs([a, b])
    expected = [sum(math.log(0.5) - math.log(1.0 + 0.07 * math.sin(i + r)) for r in range(2)) / 2 for i in range(6)]
    assert values == pytest.approx(expected)
    b.machine = {**(b.machine or {}), "cpu": "another CPU"}
    a.machine = {**(a.machine or {}), "cpu": "this CPU"}
    assert intervals.record_pairs([a, b]) == []
