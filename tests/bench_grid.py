"""The benchmark grid: every selected method x model x benchmark, one pytest-benchmark case each.

`pytest --benchmark-only` runs it on the default model (10 items per benchmark unless --limit) and
writes records plus a comparative table under --grid-out. In a plain `pytest` run the same cases
run on 2 items as a smoke test and write nothing under results/.
"""
from __future__ import annotations

import pytest

from litestage_bench.benchmarks import load_split
from litestage_bench.grid import GridCase, grid_method
from litestage_bench.runner import default_config, model_facts, run_items, seed_everything


@pytest.mark.grid
def test_grid(benchmark, grid_case, grid_session, grid_store, grid_settings):
    model, bench, method_name = grid_case
    session = grid_session(model)
    config = default_config(session.loaded)
    reasoner = session.reasoner(bench, config)
    method = grid_method(method_name, grid_settings["stages"])
    facts = model_facts(session.executor, model)
    seed_everything()
    items = load_split(bench, "eval", limit=grid_settings["limit"])
    run_items(reasoner, method, facts, items[:1], warmup=0, progress=False)  # warm-up, excluded

    results = benchmark.pedantic(run_items, args=(reasoner, method, facts, items),
                                 kwargs={"label": f"{model} {bench} {method_name}", "warmup": 0},
                                 rounds=1, iterations=1)
    assert len(results) == len(items)
    assert all(r.prediction in (None, *q.labels) for r, q in zip(results, items))
    assert all(0.0 < f <= 1.0 for r in results for f in r.executed_cost_fraction.values())
    accuracy = sum(r.correct for r in results) / len(results)
    benchmark.extra_info.update({
        "model": model, "bench": bench, "method": method_name, "n": len(items), "accuracy": accuracy,
        "tokens": {s: sum(r.tokens[s] for r in results) / len(results) for s in results[0].tokens},
        "executed_cost_fraction": {s: sum(r.executed_cost_fraction[s] for r in results) / len(results)
                                   for s in results[0].executed_cost_fraction},
    })
    grid_store.add(GridCase(model, bench, method_name, results, method.describe(), config.to_dict(),
                            grid_settings["command"]))
