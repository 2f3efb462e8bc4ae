"""The benchmark grid: models x benchmarks x methods x budget points x stage selections, one
pytest-benchmark case each (selection options in conftest.py, the machinery in litestage_bench/grid/).

`pytest --benchmark-only [-n N | --ray [ADDRESS]]` runs the main grid (default model, 10 items per benchmark, every
method at its budget points) and writes records, tables and Pareto plots under --grid-out. In a
plain `pytest` run the same code runs as a smoke (dense and unified k=4 on 2 items, 1 timed),
writing nothing under results/.
"""
from __future__ import annotations

import math

import pytest

from litestage_bench.core.errors import UserError
from litestage_bench.grid.store import GRID_PROPERTY, case_summary, extra_info


@pytest.mark.grid
@pytest.mark.slow  # loads the real default model: in `bash run.sh test --all` and CI, not in the quick `bash run.sh test`
def test_grid(benchmark, grid_case, grid_context, grid_runner, grid_store, record_property):
    try:
        # times the batch-1 questions in benchmark.pedantic (under --ray: the case's result from the cluster)
        result = grid_runner(grid_case, grid_context, benchmark)
    except UserError as err:  # e.g. a committed policy for another model: one line, not a traceback
        pytest.fail(f"litestage-bench: {err}", pytrace=False)
    grid_store.add(result)
    record = grid_store.record_for(result)  # compared with dense's case of this worker, when it ran
    info = extra_info(result, record)
    benchmark.extra_info.update(info)
    record_property(GRID_PROPERTY, case_summary(result, record))

    assert record.n == len(result.items) > 0
    assert all(r.prediction is None or r.prediction in "ABCDE" and len(r.prediction) == 1 for r in result.items)
    assert all(r.correct == (r.prediction == r.answer) for r in result.items)
    assert all(0.0 < f <= 1.0 for r in result.items for f in r.executed_cost_fraction.values())
    timed = [r for r in result.items if math.isfinite(r.latency_s)]
    assert len(timed) == result.timing["n_timed"]
    if grid_case.method == "dense":
        assert record.speedup == 1.0

