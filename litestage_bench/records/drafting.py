"""Self-speculative (lossless) stages in a record: how well the draft guessed and where time went.

Per stage and in total, summed over the items' ``ItemResult.speculative`` counts, the metrics that
speculative-decoding suites report (Spec-Bench): mean tokens per verify step (accepted drafts plus
the verifier's own token), the acceptance rate (accepted / drafted), the shares of decode time
spent drafting and verifying (prefill excluded), and the draft's executed fraction of dense FLOPs.
"""
from __future__ import annotations

from ..engine.plan import STAGES
from .items import ItemResult

COUNTS = ("verify_steps", "drafted", "accepted", "confidence_stops", "draft_s", "verify_s")
FLOPS = ("draft_flops", "draft_flops_dense")  # absent from records made before they were counted


def _metrics(sums: dict[str, float]) -> dict:
    steps, drafted, spent = sums["verify_steps"], sums["drafted"], sums["draft_s"] + sums["verify_s"]
    return {**sums,
            "tokens_per_step": (sums["accepted"] + steps) / steps if steps else None,
            "acceptance_rate": sums["accepted"] / drafted if drafted else None,
            "draft_share": sums["draft_s"] / spent if spent else None,
            "verify_share": sums["verify_s"] / spent if spent else None,
            "draft_cost_fraction": sums["draft_flops"] / sums["draft_flops_dense"] if sums.get("draft_flops_dense") else None}


def summarize_drafting(items: list[ItemResult]) -> dict | None:
    """{stage: metrics, "total": metrics} over the items' drafted stages; None if none drafted."""
    stages = [s for s in STAGES if any(s in it.speculative for it in items)]
    if not stages:
        return None
    out, total = {}, dict.fromkeys(COUNTS + FLOPS, 0.0)
    for s in stages:
        sums = {c: sum(float(it.speculative[s].get(c, 0.0)) for it in items if s in it.speculative)
                for c in COUNTS + FLOPS}
        out[s] = _metrics(sums)
        for c in COUNTS + FLOPS:
            total[c] += sums[c]
    out["total"] = _metrics(total)
    return out
