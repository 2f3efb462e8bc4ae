"""Finished cases, their merge across xdist workers, and their result records.

A case's raw result (`CaseResult`: per-item results with batch-1 latencies, and how they were
obtained) travels from a worker to the controller as JSON; the controller sorts all cases by
`GridCase.sort_key` and only then builds the records, comparing every method with dense on the
same items. So the records and tables of `-n N` and of a serial run differ only in timings.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

from ..records.results import ItemResult, ResultRecord, build_record, item_from_dict, item_to_dict, json_safe
from ..records.timing import with_latencies
from .cases import GridCase

SPLIT = "eval"
# the key under which a case's summary (test -> progress line) and a worker's cases (worker ->
# controller) travel between pytest processes
GRID_PROPERTY = "litestage_grid"


@dataclass
class CaseResult:
    """What one case produced, before the comparison with dense."""

    case: GridCase
    items: list[ItemResult]  # every item's result; the timed ones carry batch-1 latencies
    policy: dict  # method.describe()
    config: dict  # reasoner settings
    answer_rule: str
    accuracy_cached: bool  # the items came from the accuracy cache (only the timing ran)
    accuracy_seconds: float  # wall time of the batched accuracy run (or of reading the cache)
    timing: dict  # timed_ids, n_timed, seconds, batch1_vs_batched...
    # dense's timings interleaved with this case's on its timed items (empty for dense itself)
    dense_timed: list[ItemResult] = field(default_factory=list)
    search: dict | None = None  # where a searched policy came from, and what a search cost
    dtype: str | None = None
    numerics: str | None = None
    device: str | None = None
    threads: int | None = None
    worker: str = "main"
    chance: float | None = None
    noise_floor: dict | None = None
    cache_key: str | None = None
    command: str = ""
    extra: dict = field(default_factory=dict)
    # where the accuracy cache was, for a grid on a Ray cluster: "shared", "per node" or "off" (None: this machine)
    accuracy_cache: str | None = None

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("case", "items", "dense_timed")}
        return {**d, "case": self.case.to_dict(), "items": [item_to_dict(it) for it in self.items],
                "dense_timed": [item_to_dict(it) for it in self.dense_timed]}

    @staticmethod
    def from_dict(d: dict) -> "CaseResult":
        d = dict(d)
        case = GridCase.from_dict(d.pop("case"))
        items = [item_from_dict(it) for it in d.pop("items")]
        dense_timed = [item_from_dict(it) for it in d.pop("dense_timed", [])]
        return CaseResult(case=case, items=items, dense_timed=dense_timed, **d)


def build_case_record(result: CaseResult, dense: CaseResult | None) -> ResultRecord:
    """The result record of a case, compared with dense's case on the same items when there is one."""
    c = result.case
    is_dense = c.method == "dense"
    same_items = dense is not None and [i.id for i in dense.items] == [i.id for i in result.items]
    grid = {"case": c.id, "point": c.point, "stages": list(c.stages), "accuracy_cached": result.accuracy_cached,
            "accuracy_seconds": result.accuracy_seconds, "search": result.search, "worker": result.worker,
            "cache_key": result.cache_key}
    if result.accuracy_cache is not None:
        grid["accuracy_cache"] = result.accuracy_cache
    return build_record(
        model=c.model, benchmark=c.bench, split=SPLIT, method=c.method, policy=result.policy,
        answer_rule=result.answer_rule, items=[_copy(it) for it in result.items], command=result.command,
        config=result.config, speedup=1.0 if is_dense else None, extra={**result.extra, "grid": grid},
        dense_items=_dense_side(dense, result) if same_items and not is_dense else None,
        chance=result.chance, noise_floor=result.noise_floor, timing=result.timing, dtype=result.dtype, numerics=result.numerics,
        threads=result.threads, device=result.device)


def _dense_side(dense: CaseResult, result: CaseResult) -> list[ItemResult]:
    """Dense's items (answers from the dense case) with the timings taken beside this case's, so
    that the speedup pairs rounds measured back to back (none: no speedup for this case)."""
    items = [_copy(it) for it in dense.items]
    untimed = [replace(it, latency_s=math.nan, stage_latency_s={}, prefill_s={}, prefill_tokens={}, timing_rounds=[])
               for it in items]
    return with_latencies(untimed, result.dense_timed)


def _copy(item: ItemResult) -> ItemResult:
    # build_record writes each item's fidelity: work on copies so a result can be rebuilt alike
    return item_from_dict(item_to_dict(item))


class GridStore:
    """The cases finished in this process (or merged from the workers)."""

    def __init__(self) -> None:
        self.results: dict[str, CaseResult] = {}

    def add(self, result: CaseResult) -> None:
        self.results[result.case.id] = result

    def dense(self, case: GridCase) -> CaseResult | None:
        return self.results.get(GridCase(case.model, case.bench).id)

    def record_for(self, result: CaseResult) -> ResultRecord:
        return build_case_record(result, self.dense(result.case))

    def sorted(self) -> list[CaseResult]:
        return sorted(self.results.values(), key=lambda r: r.case.sort_key())

    def records(self) -> list[tuple[CaseResult, ResultRecord]]:
        return [(r, self.record_for(r)) for r in self.sorted()]

    # --- transfer between an xdist worker and the controller
    def dumps(self) -> str:
        return json.dumps([r.to_dict() for r in self.sorted()], allow_nan=True)

    def merge(self, text: str) -> None:
        for d in json.loads(text):
            self.add(CaseResult.from_dict(d))


def case_summary(result: CaseResult, record: ResultRecord) -> dict:
    """What the progress line of a finished case shows (it travels as a test's user property)."""
    return {"case": result.case.id, "worker": result.worker, "accuracy": json_safe(record.accuracy),
            "accuracy_cached": result.accuracy_cached, "speedup": json_safe(record.speedup),
            "seconds": result.accuracy_seconds + result.timing.get("seconds", 0.0)}


def extra_info(result: CaseResult, record: ResultRecord) -> dict:
    """The non-timing metrics of a case for pytest-benchmark's `extra_info` (strict JSON)."""
    fid = record.fidelity or {}
    info = {
        "model": record.model, "bench": record.benchmark, "method": record.method, "point": result.case.point,
        "stages": list(result.case.stages), "n": record.n, "n_timed": result.timing.get("n_timed"),
        "accuracy": record.accuracy, "accuracy_ci95": list(record.accuracy_ci95),
        "accuracy_cached": result.accuracy_cached,
        "fidelity": {k: fid.get(k) for k in ("agreement", "correct_to_wrong", "wrong_to_correct", "changed",
                                             "answer_kl", "stage_exact_match", "token_ratio")} if fid else None,
        "mcnemar_p": record.mcnemar_p, "retention": record.retention,
        "tokens": record.tokens, "executed_cost_fraction": record.executed_cost_fraction,
        "latency_s": record.latency_s, "stage_latency_s": record.stage_latency_s,
        "speedup": record.speedup, "speedup_ci95": list(record.speedup_ci95) if record.speedup_ci95 else None,
        "policy_source": (result.search or {}).get("source"), "search_seconds": (result.search or {}).get("seconds"),
        "dtype": result.dtype, "numerics": result.numerics, "device": result.device, "threads": result.threads, "worker": result.worker,
    }
    return json_safe(info)  # pytest-benchmark writes extra_info into its JSON

