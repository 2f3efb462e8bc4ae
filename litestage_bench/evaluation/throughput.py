"""Throughput timing (`--timing batch=B`): dense and a method solve the same chunks of B items as
one batch each, interleaved; records/throughput.py turns the chunk rounds into the speedup, its CI
and the decomposition."""
from __future__ import annotations

from ..engine.plan import SkipPlan
from .benchmarks import Question
from .checkpoint import RunCheckpoint
from .reasoner import Callbacks, Reasoner


def chunks_of(items: list[Question], batch: int) -> list[list[Question]]:
    """Whole chunks of `batch` items (a last, smaller chunk would be a different batch size: dropped)."""
    return [items[i:i + batch] for i in range(0, len(items) - batch + 1, batch)]


def time_chunks(reasoner: Reasoner, pipelines: dict[str, tuple[SkipPlan, Callbacks]], chunks: list[list[Question]],
                rounds: int, log=None, label: str = "", checkpoint: RunCheckpoint | None = None,
                phase: str = "chunk rounds") -> dict[str, list[list[dict]]]:
    """Per pipeline, per chunk, its `rounds` chunk rounds (records/throughput.py, plus each item's
    answer in `answers`). In every round each pipeline solves the whole
    chunk as one batch, back to back, the order alternating by chunk and round, so that a drift of the
    machine hits both sides alike. The first chunk is solved once per pipeline beforehand, untimed
    (warm-up: allocations of the batch's shapes, the plan's header caches). With a `checkpoint`, each
    chunk's rounds are kept under `phase` (which names the machine: another one times them again) as
    the chunk finishes, and a chunk kept by an interrupted run is read back instead of timed."""
    names = list(pipelines)
    kept = {c: checkpoint.get_value(phase, str(c)) if checkpoint else None for c in range(1, len(chunks) + 1)}
    todo = [c for c, value in kept.items() if value is None]
    if log is not None:
        back = f" ({len(chunks) - len(todo)} chunks read back from {checkpoint.path})" if len(todo) < len(chunks) else ""
        log(f"[{label} batch {len(chunks[0])} timed] warm-up: {len(names)} pipelines on chunk 1, then "
            f"{len(todo)} chunks x {rounds} rounds x {len(names)} pipelines{back}")
    if todo:
        for plan, callbacks in pipelines.values():
            reasoner.time_batch(chunks[0], plan, callbacks)
    out: dict[str, list[list[dict]]] = {name: [] for name in names}
    for c, chunk in enumerate(chunks, 1):
        per_round = kept[c] or _chunk_rounds(reasoner, pipelines, chunk, c, len(chunks), rounds, log, label)
        if checkpoint is not None and kept[c] is None:
            checkpoint.put_value(phase, str(c), per_round)
        for name in names:
            out[name].append(per_round[name])
        if log is not None and kept[c] is None:
            seconds = {n: sum(s["seconds"] for e in per_round[n] for s in e["stages"].values()) / rounds for n in names}
            log(f"[{label} batch {len(chunk)} timed] chunk {c}/{len(chunks)}: "
                + ", ".join(f"{n} {v:.1f} s" for n, v in seconds.items()))
    return out


def _chunk_rounds(reasoner: Reasoner, pipelines: dict[str, tuple[SkipPlan, Callbacks]], chunk: list[Question],
                  c: int, n_chunks: int, rounds: int, log, label: str) -> dict[str, list[dict]]:
    """Chunk c's rounds: every pipeline solves it once per round, the order alternating."""
    names = list(pipelines)
    per_round: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(rounds):
        order = names if (c + r) % 2 else names[::-1]
        for name in order:
            solved, stages = reasoner.time_batch(chunk, *pipelines[name])
            per_round[name].append({"first": name == order[0], "stages": stages,
                                    "answers": [it.prediction for it in solved]})
        if log is not None and r + 1 < rounds:
            log(f"[{label} batch {len(chunk)} timed] chunk {c}/{n_chunks}: round {r + 1}/{rounds} done")
    return per_round
