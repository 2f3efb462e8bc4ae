"""What the main job shows while it runs: the worker lines tailed to the terminal, the expected time
at the start, an ETA that the first (model-loading) case does not skew, and one model x benchmark
dealt out over both workers."""
from __future__ import annotations

import json
import os
import time

import pytest
from test_grid_parallel import _grid, _run

from litestage_bench.evaluation import runner
from litestage_bench.grid.cases import GridCase
from litestage_bench.grid.progress import ProgressTail, expected_seconds
from litestage_bench.grid.report import without_timings
from litestage_bench.grid.workers import Progress


def test_the_tail_copies_whole_lines_as_they_come_and_the_rest_at_the_end(tmp_path):
    read, write = os.pipe()
    tail = ProgressTail(tmp_path / "progress.log", write, interval=0.05).start()
    try:
        runner.log("[case] first line")  # runner.log writes to the file while the tail runs
        with open(tmp_path / "progress.log", "a") as fh:
            fh.write("half a li")
        time.sleep(0.3)
        assert os.read(read, 1000) == b"[case] first line\n"  # the unfinished line waits
        with open(tmp_path / "progress.log", "a") as fh:
            fh.write("ne\n")
    finally:
        tail.stop()
    assert os.read(read, 1000) == b"half a line\n"
    assert runner.PROGRESS_FILE_ENV not in os.environ


def test_expected_time_scales_a_committed_run_and_fills_unseen_cases(tmp_path):
    ref = {"created": "2026-11-25T00:00:00", "machine": {"cpu": "Some CPU"},
           "selection": {"limit": 10, "timed": 5},
           "cases": [{"case": "m-obqa-dense", "model": "m", "accuracy_seconds": 10.0, "timed_seconds": 20.0},
                     {"case": "m-obqa-unified-k4", "model": "m", "accuracy_seconds": 20.0, "timed_seconds": 40.0}]}
    (tmp_path / "grid.json").write_text(json.dumps(ref))
    cases = [GridCase("m", "obqa"), GridCase("m", "obqa", "unified", 4), GridCase("m", "csqa", "unified", 4)]
    seconds, source = expected_seconds(cases, limit=5, timed=5, rounds=2, workers=2, reference=tmp_path / "grid.json")
    # half the items, twice the timed questions; the CSQA case at the median of the model's cases
    per_case = [10 * 0.5 + 20 * 2, 20 * 0.5 + 40 * 2]
    assert seconds == pytest.approx((sum(per_case) + sorted(per_case)[1] / 2 + sorted(per_case)[0] / 2) / 2)
    assert "Some CPU" in source and "2026-11-25" in source
    assert expected_seconds(cases, 5, 5, 1, 1, tmp_path / "missing.json") is None
    assert expected_seconds([GridCase("other", "obqa")], 5, 5, 1, 1, tmp_path / "grid.json") is None


def test_the_eta_leaves_out_each_workers_first_case():
    progress = Progress(total=6, workers=2)
    progress.line({"case": "a", "worker": "gw0", "seconds": 100.0})  # loads the model
    progress.line({"case": "b", "worker": "gw1", "seconds": 90.0})
    line = progress.line({"case": "c", "worker": "gw0", "seconds": 10.0})
    assert line.endswith("eta 0.2 min")  # 3 left x 10 s / 2 workers, not x 66.7 s


@pytest.mark.slow  # a whole search or grid run: in `bash run.sh test --all` and CI
def test_one_model_and_benchmark_is_dealt_out_over_both_workers(tmp_path):
    pytest.importorskip("xdist")
    one = ("--models", "smollm2-135m", "--benches", "obqa")
    parallel, out = _grid(tmp_path, "parallel", *one, "-n", "2")
    serial, _ = _grid(tmp_path, "serial", *one)
    assert {c["worker"] for c in parallel["cases"]} == {"gw0", "gw1"}
    assert [without_timings(g) for g in parallel["groups"]] == [without_timings(g) for g in serial["groups"]]
    first = next(line for line in out.splitlines() if line.startswith("[grid]"))
    assert "4 cases" in first and "no earlier run" in first  # printed before any case ran
    proc = _run(tmp_path, "bad", "--benches", "all,obqa")
    assert proc.returncode != 0 and "'all'" in (proc.stdout + proc.stderr)
