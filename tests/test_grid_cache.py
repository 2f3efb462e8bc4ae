"""The grid's accuracy cache: keyed by the full configuration, atomic entries (a process killed
mid-write leaves none, never a corrupt one), resumable mid-case, and one writer per entry."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from litestage_bench.grid.cache import AccuracyCache, cache_key
from litestage_bench.records.results import ItemResult

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"model": "m", "weights": "sha", "items": ["a", "b", "c", "d"], "method": {"name": "unified-k4"}}


def _item(qid: str, prediction: str = "A") -> ItemResult:
    return ItemResult(id=qid, answer="A", prediction=prediction, rule="cloze", correct=prediction == "A",
                      latency_s=float("nan"), stage_latency_s={}, tokens={"recall": 3}, outputs={"recall": "x"},
                      predictions_by_rule={"cloze": prediction}, executed_cost_fraction={"recall": 0.5})


def test_key_is_canonical_and_sees_every_field():
    assert cache_key(CONFIG) == cache_key(dict(reversed(list(CONFIG.items()))))
    for field, value in [("model", "other"), ("weights", "sha2"), ("items", ["a", "b"]),
                         ("method", {"name": "unified-k8"}), ("dtype", "bfloat16")]:
        assert cache_key({**CONFIG, field: value}) != cache_key(CONFIG), field


def test_computes_once_then_reads_back(tmp_path):
    cache, calls = AccuracyCache(tmp_path), []

    def compute(checkpoint):
        calls.append(checkpoint)
        return [_item("a"), _item("b", "B")]

    first, cached1 = cache.get_or_compute(CONFIG, compute)
    second, cached2 = cache.get_or_compute(CONFIG, compute)
    assert (cached1, cached2, len(calls)) == (False, True, 1)
    assert [(i.id, i.prediction, i.correct) for i in second] == [(i.id, i.prediction, i.correct) for i in first]
    assert not list(tmp_path.glob("*.partial.jsonl"))  # the checkpoint goes once the entry is written
    # another configuration is another entry
    _, cached3 = cache.get_or_compute({**CONFIG, "dtype": "bfloat16"}, compute)
    assert not cached3 and len(calls) == 2


def test_int_keyed_config_reads_back_from_its_entry(tmp_path):
    # AdaSkip's per-layer scales are keyed by int layer index; JSON stores them as strings, which
    # sort differently, so the stored config must still match the one that made it
    config = {**CONFIG, "method": {"name": "adaskip-k8", "attn_scale": {3: 1.01, 13: 1.05, 27: 1.15}}}
    cache = AccuracyCache(tmp_path)
    cache.get_or_compute(config, lambda cp: [_item("a")])
    assert cache.get_or_compute(config, lambda cp: [_item("a")])[1] is True
    assert {p.stem for p in tmp_path.glob("*.json")} == {cache_key(config)}


def test_off_always_computes(tmp_path):
    cache = AccuracyCache(None)
    assert cache.get_or_compute(CONFIG, lambda cp: [_item("a")]) [1] is False
    assert cache.get_or_compute(CONFIG, lambda cp: [_item("a")])[1] is False


def test_an_unreadable_entry_is_recomputed(tmp_path):
    cache = AccuracyCache(tmp_path)
    cache.get_or_compute(CONFIG, lambda cp: [_item("a")])
    path = cache.path(cache_key(CONFIG))
    path.write_text(path.read_text()[:40])  # e.g. a disk that filled up under another tool
    items, cached = cache.get_or_compute(CONFIG, lambda cp: [_item("a", "C")])
    assert not cached and items[0].prediction == "C"
    assert json.loads(path.read_text())["items"][0]["prediction"] == "C"


# A child that computes an entry and is killed: mid-write of the entry ("write"), or after the first
# of two batches of its accuracy run ("compute"). It signals the parent by creating READY.
CHILD = r"""
import json, sys, time
from pathlib import Path
from litestage_bench.grid import cache as grid_cache
from litestage_bench.records.results import ItemResult

folder, mode, ready = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
config = json.loads(sys.argv[4])

def item(qid):
    return ItemResult(id=qid, answer="A", prediction="A", rule="cloze", correct=True, latency_s=float("nan"),
                      stage_latency_s={}, tokens={}, outputs={}, predictions_by_rule={}, executed_cost_fraction={})

def compute(checkpoint):
    out = []
    for key in ("a,b", "c,d"):
        done = checkpoint.get("batch", key)
        if done is None:
            done = [item(q) for q in key.split(",")]
            checkpoint.put("batch", key, done)
            if mode == "compute":
                ready.touch()
                time.sleep(120)
        out += done
    return out

if mode == "write":
    real_dump = json.dump
    def slow_dump(obj, fh, **kw):
        text = json.dumps(obj, **kw)
        fh.write(text[: len(text) // 2])
        fh.flush()
        ready.touch()
        time.sleep(120)
        fh.write(text[len(text) // 2:])
    grid_cache.json.dump = slow_dump
grid_cache.AccuracyCache(folder).get_or_compute(config, compute)
"""


def _killed_child(tmp_path: Path, mode: str) -> None:
    ready = tmp_path / f"ready-{mode}"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "cache"), mode, str(ready), json.dumps(CONFIG)],
                            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "the child never got there"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def test_killed_mid_write_leaves_no_entry(tmp_path):
    _killed_child(tmp_path, "write")
    cache = AccuracyCache(tmp_path / "cache")
    key = cache_key(CONFIG)
    assert not cache.path(key).exists()  # only the temp file was half written
    assert cache.load(key, CONFIG) is None
    items, cached = cache.get_or_compute(CONFIG, lambda cp: [_item("a"), _item("b")])
    assert not cached and len(cache.load(key, CONFIG)) == 2


def test_killed_mid_case_resumes_after_the_finished_batch(tmp_path):
    _killed_child(tmp_path, "compute")
    cache, computed = AccuracyCache(tmp_path / "cache"), []

    def compute(checkpoint):
        out = []
        for key in ("a,b", "c,d"):
            done = checkpoint.get("batch", key)
            if done is None:
                computed.append(key)
                done = [_item(q) for q in key.split(",")]
                checkpoint.put("batch", key, done)
            out += done
        return out

    items, cached = cache.get_or_compute(CONFIG, compute)
    assert not cached and computed == ["c,d"] and [i.id for i in items] == ["a", "b", "c", "d"]
    assert not list((tmp_path / "cache").glob("*.partial.jsonl"))


TWO = r"""
import json, sys, time
from pathlib import Path
from litestage_bench.grid.cache import AccuracyCache
from litestage_bench.records.results import ItemResult

folder, barrier, me, config = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
(barrier / me).touch()
while len(list(barrier.iterdir())) < 2:
    time.sleep(0.005)

def compute(checkpoint):
    time.sleep(1.0)
    return [ItemResult(id="a", answer="A", prediction=me, rule="cloze", correct=False, latency_s=float("nan"),
                       stage_latency_s={}, tokens={}, outputs={}, predictions_by_rule={}, executed_cost_fraction={})]

items, cached = AccuracyCache(folder).get_or_compute(config, compute)
print(json.dumps({"cached": cached, "prediction": items[0].prediction}))
"""


def test_two_processes_on_one_entry_compute_it_once(tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", TWO, str(tmp_path / "cache"), str(barrier), str(i),
                               json.dumps(CONFIG)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(r["cached"] for r in reports) == [False, True]
    assert len({r["prediction"] for r in reports}) == 1  # the waiter read what the other one wrote
    assert any("waiting for another process" in err for _, err in outs)


def _assert_version_follows(tmp_path, monkeypatch, name: str, kept: list[str], changed: list[str]) -> None:
    """core.code_version's `name` over a fake tree (package files `kept` and `changed`, and one
    baseline): an edit to a `kept` file leaves it, one to a `changed` file or the baseline moves it."""
    from litestage_bench.core import code_version as versions

    pkg, base = tmp_path / "litestage_bench", tmp_path / "baselines"
    paths = [pkg / rel for rel in kept + changed] + [base / "unified.py"]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# v1\n")
    monkeypatch.setattr(versions, "PACKAGE", pkg)
    function = getattr(versions, name)

    def version() -> str:
        function.cache_clear()
        return function()

    v1 = version()
    for path in paths[:len(kept)]:
        path.write_text("# v2\n")
        assert version() == v1, path
    for path in paths[len(kept):]:
        before = version()
        path.write_text("# v2\n")
        assert version() != before, path
    function.cache_clear()


def test_code_version_follows_the_sources_that_shape_results(tmp_path, monkeypatch):
    _assert_version_follows(tmp_path, monkeypatch, "code_version", kept=["records/report.py", "grid/report.py"],
                            changed=["engine/executor.py", "grid/run.py"])


def test_the_timing_version_follows_only_what_runs_while_a_solve_is_timed(tmp_path, monkeypatch):
    """A search's timing rows are keyed on the executor, reasoner and timing loop (and the baselines):
    an edit to the search's sweeps or a study keeps them, one to the executor re-times."""
    _assert_version_follows(tmp_path, monkeypatch, "timing_code_version",
                            kept=["methods/search_sweep.py", "studies/ledger.py"],
                            changed=["engine/executor.py", "evaluation/runner.py", "core/errors.py"])
