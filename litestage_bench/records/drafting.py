"""Self-speculative (lossless) stages in a record: how well the draft guessed and where time went.

Per stage and in total, summed over the items' ``ItemResult.speculative`` counts, the metrics that
speculative-decoding suites report (Spec-Bench): mean tokens per verify step (accepted drafts plus
the verifier's own token), the acceptance rate (accepted / drafted), the shares of decode time
spent drafting and verifying (prefill excluded), and the draft's executed fraction of dense FLOPs.
"""
from __future__ import annotations

import math

from ..engine.plan import STAGES
from .items import ItemResult

COUNTS = ("verify_steps", "drafted", "accepted", "confidence_stops")
SECONDS = ("draft_s", "verify_s")
FLOPS = ("draft_flops", "draft_flops_dense")  # absent from records made before they were counted


def _metrics(sums: dict[str, float]) -> dict:
    steps, drafted, spent = sums["verify_steps"], sums["drafted"], sums["draft_s"] + sums["verify_s"]
    return {**sums,
            "tokens_per_step": (sums["accepted"] + steps) / steps if steps else None,
            "acceptance_rate": sums["accepted"] / drafted if drafted else None,
            "draft_share": sums["draft_s"] / spent if spent else None,
            "verify_share": sums["verify_s"] / spent if spent else None,
            "draft_cost_fraction": sums["draft_flops"] / sums["draft_flops_dense"] if sums.get("draft_flops_dense") else None}


def _sums(items: list[ItemResult], stage: str, keys: tuple[str, ...]) -> dict[str, float]:
    return {c: sum(float(it.speculative[stage].get(c, 0.0)) for it in items if stage in it.speculative) for c in keys}


def summarize_drafting(items: list[ItemResult]) -> dict | None:
    """{stage: metrics, "total": metrics} over the items' drafted stages; None if none drafted.

    Counts come from every item. Seconds come from the timed items (batch 1, ``latency_s`` finite)
    when there are any: in a batched pass a forward serves several rows, so its seconds per row say
    nothing of a question's latency. `seconds_from` says which."""
    stages = [s for s in STAGES if any(s in it.speculative for it in items)]
    if not stages:
        return None
    timed = [it for it in items if math.isfinite(it.latency_s) and it.speculative]
    clocked = timed or items
    out, total = {}, dict.fromkeys(COUNTS + FLOPS + SECONDS + ("timed_drafted", "timed_verify_steps"), 0.0)
    for s in stages:
        sums = {**_sums(items, s, COUNTS + FLOPS), **_sums(clocked, s, SECONDS)}
        # the timed items' own counts, to turn their seconds into seconds per step
        sums.update({f"timed_{c}": v for c, v in _sums(clocked, s, ("drafted", "verify_steps")).items()})
        out[s] = _metrics(sums)
        for c in total:
            total[c] = total.get(c, 0.0) + sums[c]
    out["total"] = _metrics(total)
    out["seconds_from"] = f"{len(timed)} timed items" if timed else "all items (none timed)"
    return out
