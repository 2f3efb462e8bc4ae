"""A fake grid case runner (`pytest --grid-runner fake_grid:run_case`): no model, answers that
depend only on the case (so records must match across runs), latencies that differ per run, and
the real accuracy cache. Used by tests/test_grid_parallel.py."""
from __future__ import annotations

import hashlib
import os
import random
import time

from litestage_bench.engine.plan import STAGES
from litestage_bench.grid.store import CaseResult
from litestage_bench.records.results import ItemResult

N_ITEMS = 6


def _u(*parts: object) -> float:
    """A deterministic number in [0, 1) from `parts`."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16) / 16 ** 8


def _items(case, n: int) -> list[ItemResult]:
    items = []
    for i in range(n):
        answer = "ABCD"[int(_u(case.bench, i, "answer") * 4)]
        prediction = "ABCD"[int(_u(case.model, case.bench, i, "dense") * 4)]
        if case.method != "dense" and _u(case.id, i) < 0.15 * (case.k or 1):
            prediction = "ABCD"[int(_u(case.id, i, "changed") * 4)]
        scores = [_u(case.id, i, j) for j in range(4)]
        items.append(ItemResult(
            id=f"{case.bench}-{i}", answer=answer, prediction=prediction, rule="cloze", correct=prediction == answer,
            latency_s=float("nan"), stage_latency_s={}, tokens={s: 10 + int(_u(case.id, i, s) * 20) for s in STAGES},
            outputs={s: f"{prediction}{s}{int(_u(case.id, i, s) * 3)}" for s in STAGES},
            predictions_by_rule={"cloze": prediction},
            executed_cost_fraction={s: 1.0 - 0.05 * (case.k or 0) for s in STAGES}, option_scores={"cloze": scores}))
    return items


def run_case(case, ctx, benchmark) -> CaseResult:
    import torch

    if os.environ.get("FAKE_GRID_INTERRUPT") == case.id:  # Ctrl-C as this case starts
        raise KeyboardInterrupt
    n = ctx.selection.limit or N_ITEMS
    config = {"fake": case.id, "n": n}
    start = time.perf_counter()
    items, cached = ctx.cache.get_or_compute(config, lambda checkpoint: _items(case, n), case.id)
    accuracy_seconds = time.perf_counter() - start

    def timed() -> list[float]:
        time.sleep(0.002)
        return [0.5 + random.random() / (1 + (case.k or 0)) for _ in items]  # differs from run to run

    latencies = benchmark.pedantic(timed, rounds=1, iterations=1)
    for item, lat in zip(items, latencies):
        item.latency_s = lat
        item.stage_latency_s = {s: lat / 3 for s in STAGES}
    return CaseResult(case=case, items=items, policy={"name": case.id}, config={"answer_rule": "cloze"},
                      answer_rule="cloze", accuracy_cached=cached, accuracy_seconds=accuracy_seconds,
                      timing={"n_timed": len(items), "seconds": 0.002, "timed_ids": [it.id for it in items]},
                      dtype="float32", device=ctx.device, threads=torch.get_num_threads(), worker=ctx.worker,
                      chance=0.25, command=ctx.command)
