"""Throughput timing (`--timing batch=B`): dense and a method solve the same chunks of B items as
one batch each, interleaved; records/throughput.py turns the chunk rounds into the speedup, its CI
and the decomposition."""
from __future__ import annotations

from ..engine.plan import SkipPlan
from .benchmarks import Question
from .reasoner import Callbacks, Reasoner


def chunks_of(items: list[Question], batch: int) -> list[list[Question]]:
    """Whole chunks of `batch` items (a last, smaller chunk would be a different batch size: dropped)."""
    return [items[i:i + batch] for i in range(0, len(items) - batch + 1, batch)]


def time_chunks(reasoner: Reasoner, pipelines: dict[str, tuple[SkipPlan, Callbacks]], chunks: list[list[Question]],
                rounds: int, log=None, label: str = "") -> dict[str, list[list[dict]]]:
    """Per pipeline, per chunk, its `rounds` chunk rounds (records/throughput.py, plus each item's
    answer in `answers`). In every round each pipeline solves the whole
    chunk as one batch, back to back, the order alternating by chunk and round, so that a drift of the
    machine hits both sides alike. The first chunk is solved once per pipeline beforehand, untimed
    (warm-up: allocations of the batch's shapes, the plan's header caches)."""
    names = list(pipelines)
    if log is not None:
        log(f"[{label} batch {len(chunks[0])} timed] warm-up: {len(names)} pipelines on chunk 1, then "
            f"{len(chunks)} chunks x {rounds} rounds x {len(names)} pipelines")
    for plan, callbacks in pipelines.values():
        reasoner.time_batch(chunks[0], plan, callbacks)
    out: dict[str, list[list[dict]]] = {name: [] for name in names}
    for c, chunk in enumerate(chunks, 1):
        per_round: dict[str, list[dict]] = {name: [] for name in names}
        for r in range(rounds):
            order = names if (c + r) % 2 else names[::-1]
            for name in order:
                solved, stages = reasoner.time_batch(chunk, *pipelines[name])
                per_round[name].append({"first": name == order[0], "stages": stages,
                                        "answers": [it.prediction for it in solved]})
            if log is not None and r + 1 < rounds:
                log(f"[{label} batch {len(chunk)} timed] chunk {c}/{len(chunks)}: round {r + 1}/{rounds} done")
        for name in names:
            out[name].append(per_round[name])
        if log is not None:
            seconds = {n: sum(s["seconds"] for e in per_round[n] for s in e["stages"].values()) / rounds for n in names}
            log(f"[{label} batch {len(chunk)} timed] chunk {c}/{len(chunks)}: "
                + ", ".join(f"{n} {v:.1f} s" for n, v in seconds.items()))
    return out
