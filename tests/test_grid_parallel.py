"""The grid under pytest-xdist, with a fake case runner (no model): `-n 2` and a serial run give
the same tables and records except timings; each (model, benchmark) group stays on one worker;
workers pin their threads; a second run reads accuracy from the cache and only re-times."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from litestage_bench.grid.report import COLUMNS, TIMING_COLUMNS, without_timings
from litestage_bench.grid.workers import usable_cores

ROOT = Path(__file__).resolve().parents[1]
GRID = ["tests/bench_grid.py", "--benchmark-only", "--grid-runner", "fake_grid:run_case",
        "--models", "smollm2-135m,qwen2.5-coder-0.5b", "--benches", "obqa,csqa",
        "--methods", "dense,unified,early_exit", "--points", "unified=1,3;early_exit=2", "--limit", "6",
        "-q"]
# what may differ between two runs of the same grid: measured times and where/when they ran
VOLATILE = {"latency_s", "stage_latency_s", "speedup", "speedup_ci95", "machine", "created", "timing", "threads",
            "command"}


def _run(tmp: Path, name: str, *extra: str, cache: str | None = None, env: dict | None = None):
    cmd = [sys.executable, "-m", "pytest", *GRID, "--grid-out", str(tmp / name),
           "--grid-cache", cache or str(tmp / f"cache-{name}"), *extra]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          capture_output=True, text=True, timeout=600)


def _grid(tmp: Path, name: str, *extra: str, cache: str | None = None) -> tuple[dict, str]:
    proc = _run(tmp, name, *extra, cache=cache)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp / name / "grid.json").read_text()), proc.stdout


def _records(doc: dict, folder: Path) -> dict:
    out = {}
    for case in doc["cases"]:
        rec = json.loads((folder / case["record"]).read_text())
        rec = {k: v for k, v in rec.items() if k not in VOLATILE}
        rec["items"] = [{k: v for k, v in it.items() if k not in VOLATILE} for it in rec["items"]]
        rec["extra"]["grid"] = {k: v for k, v in rec["extra"]["grid"].items() if k not in ("worker", "accuracy_seconds")}
        out[case["case"]] = rec
    return out


@pytest.mark.slow  # a whole search or grid run: in `bash run.sh test --all` and CI
def test_serial_and_two_workers_agree_except_timings_and_a_rerun_reads_the_cache(tmp_path):
    pytest.importorskip("xdist")
    cache = str(tmp_path / "cache")
    serial, serial_out = _grid(tmp_path, "serial", cache=cache)
    parallel, parallel_out = _grid(tmp_path, "parallel", "-n", "2")  # a cache of its own: computes too

    # same tables, row for row, once the timing columns are dropped; same records but for timings
    assert [without_timings(g) for g in serial["groups"]] == [without_timings(g) for g in parallel["groups"]]
    assert len(serial["cases"]) == 16
    assert _records(serial, tmp_path / "serial") == _records(parallel, tmp_path / "parallel")
    assert [g["rows"] for g in serial["groups"]] != [g["rows"] for g in parallel["groups"]], "timings should differ"

    # each (model, benchmark) group ran on one worker, and both workers ran some
    by_group: dict[tuple, set] = {}
    for c in parallel["cases"]:
        by_group.setdefault((c["model"], c["bench"]), set()).add(c["worker"])
    assert all(len(w) == 1 for w in by_group.values()), by_group
    assert set.union(*by_group.values()) == {"gw0", "gw1"}
    assert {c["threads"] for c in parallel["cases"]} == {max(1, usable_cores() // 2)}
    assert {c["worker"] for c in serial["cases"]} == {"main"}

    # a progress line per finished case, with its ETA, from the serial run and the controller
    for out in (serial_out, parallel_out):
        lines = [line for line in out.splitlines() if re.search(r"\[grid \d+/16", line)]
        assert len(lines) == 16 and "eta" in lines[0] and lines[-1].endswith("last case"), lines
    assert (tmp_path / "parallel" / "table.md").read_text().count("## ") == 4
    assert serial["wall_seconds"] > 0 and "Wall time of the session" in (tmp_path / "parallel" / "table.md").read_text()
    assert sorted(p.name for p in (tmp_path / "parallel").glob("pareto_*.png")) == [
        "pareto_qwen2.5-coder-0.5b_csqa.png", "pareto_qwen2.5-coder-0.5b_obqa.png",
        "pareto_smollm2-135m_csqa.png", "pareto_smollm2-135m_obqa.png"]

    # a second run on the same cache, into the first run's folder with one benchmark fewer, reads every
    # accuracy back (the table says so) and only re-times; the first run's other records and plots go
    again, _ = _grid(tmp_path, "serial", "--benches", "obqa", cache=cache)
    assert not any(c["accuracy_cached"] for c in serial["cases"])
    assert all(c["accuracy_cached"] for c in again["cases"])
    column = [c for c in COLUMNS if c not in TIMING_COLUMNS].index("accuracy from")
    rows = lambda doc: [[r[:column] + r[column + 1:] for r in without_timings(g)["rows"]] for g in doc["groups"]  # noqa: E731
                        if g["bench"] == "obqa"]
    assert rows(again) == rows(serial)
    assert {r[column] for g in again["groups"] for r in without_timings(g)["rows"]} == {"cache"}
    assert sorted(p.name for p in (tmp_path / "serial").glob("pareto_*.png")) == [
        "pareto_qwen2.5-coder-0.5b_obqa.png", "pareto_smollm2-135m_obqa.png"]
    assert sorted(p.name for p in (tmp_path / "serial" / "records").iterdir()) == sorted(
        Path(c["record"]).name for c in again["cases"])


@pytest.mark.slow  # a whole search or grid run: in `bash run.sh test --all` and CI
def test_an_interrupted_run_writes_no_table_and_resumes_from_the_cache(tmp_path):
    cache, one = str(tmp_path / "cache"), ["--models", "smollm2-135m", "--benches", "obqa"]
    stopped = _run(tmp_path, "stopped", *one, cache=cache, env={"FAKE_GRID_INTERRUPT": "smollm2-135m-obqa-unified-k3"})
    assert stopped.returncode == 2, stopped.stdout[-2000:]
    assert "rerun the same command to resume" in stopped.stdout
    assert not (tmp_path / "stopped" / "grid.json").exists()
    resumed, _ = _grid(tmp_path, "resumed", *one, cache=cache)
    cached = {c["case"]: c["accuracy_cached"] for c in resumed["cases"]}
    assert cached == {"smollm2-135m-obqa-dense": True, "smollm2-135m-obqa-unified-k1": True,
                      "smollm2-135m-obqa-unified-k3": False, "smollm2-135m-obqa-early_exit-k2": False}
