"""Throughput speedups: items per hour at batch B, from chunks of B items that dense and the method
each solve as one batch, interleaved (evaluation/throughput.py measures them).

A chunk round is what one pipeline measured on one chunk in one round:
``{"first": bool, "stages": {stage: {"seconds", "generated", "computed", "cost_fraction"}}}``.

Estimator. Per chunk c and round r, log ratio_cr = log(dense seconds / method seconds), both
measured in the same round, back to back. The throughput speedup is exp(mean over chunks of each
chunk's mean over rounds), its 95% interval the Student t interval over the chunks' means
(`timing.t_gm_ci95`: refused below 3 chunks). Items per hour = B x 3600 / seconds per chunk
(median over the chunk rounds).

Decomposition, per chunk pair, exact and multiplicative (geometric means over the same pairs):
    speedup = fewer tokens x less waiting x cheaper tokens
    fewer tokens   = dense generated / method generated
    less waiting   = (dense computed / dense generated) / (method computed / method generated)
    cheaper tokens = dense seconds per computed token / method seconds per computed token
`generated` counts the tokens the rows produced, `computed` the decode row-steps the batch ran
(a finished row still in the batch, fed padding, is computed and generates nothing): `less waiting`
below 1 is speed lost to rows that wait for the longest one. A stage whose computed tokens were not
counted (a drafted stage) takes computed = generated on both sides (its waiting factor is 1).
"""
from __future__ import annotations

import math
import statistics

from ..engine.plan import STAGES
from .timing import NAN, _gm, _item_means, t_gm_ci95

FACTORS = ("speedup", "token_factor", "waiting_factor", "per_token_factor")
DEFAULT_CHUNKS = 4  # chunks of B items per record: 3 or more give a t interval over chunks
DEFAULT_CHUNK_ROUNDS = 4  # interleaved rounds per chunk: each side goes first twice


def parse_timing(text: str) -> int:
    """`latency` -> 1 (batch-1 latency only); `batch=B` -> B >= 2 (throughput at batch B as well)."""
    from ..core.errors import UserError

    if text == "latency":
        return 1
    name, _, value = text.partition("=")
    if name != "batch" or not value.isdigit() or int(value) < 2:
        raise UserError(f"--timing {text!r} is not a timing mode", "use latency or batch=B with B >= 2, e.g. batch=8")
    return int(value)


def _totals(entry: dict, stage: str | None) -> tuple[float, int, int]:
    """(seconds, generated, computed) of a chunk round, for a stage or the whole question."""
    stages = STAGES if stage is None else (stage,)
    parts = [entry["stages"][s] for s in stages if s in entry["stages"]]
    seconds = sum(p["seconds"] for p in parts)
    generated = sum(p["generated"] for p in parts)
    computed = sum(p["computed"] if p.get("computed") is not None else p["generated"] for p in parts)
    return seconds, max(generated, 1), max(computed, 1)


def _log(a: float, b: float) -> float | None:
    return math.log(a / b) if a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b) else None


def _pair_factors(d: dict, m: dict, stage: str | None) -> dict[str, float | None]:
    td, gd, cd = _totals(d, stage)
    tm, gm, cm = _totals(m, stage)
    return {"speedup": _log(td, tm), "token_factor": _log(gd, gm),
            "waiting_factor": _log(cd / gd, cm / gm), "per_token_factor": _log(td / cd, tm / cm)}


def throughput_summary(dense: list[list[dict]], method: list[list[dict]], batch: int) -> dict:
    """The throughput speedup with its CI over chunks, items per hour on each side, and per stage and
    for the whole question the decomposition (geometric means of the chunk pairs' factors) with the
    mean generated and computed tokens per chunk and the executed-cost fraction. `dense[c][r]` and
    `method[c][r]`: chunk c's round r on each side."""
    out: dict = {"batch_size": batch, "n_chunks": len(dense), "rounds": max((len(r) for r in dense), default=0)}
    for stage in (*STAGES, None):
        per_chunk = [[_pair_factors(a, b, stage) for a, b in zip(dr, mr)] for dr, mr in zip(dense, method)]
        row: dict = {}
        for key in FACTORS:
            value = _gm(_item_means([[f[key] for f in rounds] for rounds in per_chunk]))
            row[key] = value if math.isfinite(value) else None
        for side, chunks in (("dense", dense), ("method", method)):
            entries = [e for rounds in chunks for e in rounds]
            row[f"generated_{side}"] = statistics.fmean(_totals(e, stage)[1] for e in entries) if entries else None
            row[f"computed_{side}"] = statistics.fmean(_totals(e, stage)[2] for e in entries) if entries else None
            if stage is not None:
                row[f"cost_fraction_{side}"] = (statistics.fmean(e["stages"][stage]["cost_fraction"] for e in entries)
                                                if entries else None)
        if stage is None:
            means = _item_means([[f["speedup"] for f in rounds] for rounds in per_chunk])
            ci, refused = t_gm_ci95(means)
            out.update(throughput_speedup=row["speedup"] if row["speedup"] is not None else NAN,
                       throughput_speedup_ci95=None if refused else list(ci), ci95_refused=refused)
            for side, chunks in (("dense", dense), ("method", method)):
                seconds = [_totals(e, None)[0] for rounds in chunks for e in rounds]
                out[f"items_per_hour_{side}"] = batch * 3600 / statistics.median(seconds) if seconds else None
        out.setdefault("decomposition", {})[stage or "total"] = row
    return out
