"""How each method's speedup moves from batch 1 (latency) to batch B (throughput), and why.

    python -m litestage_bench.studies.batch_shift results/batch8 --out results/batch8/shift.md

Per record re-timed at batch B (`litestage-bench retime-throughput`, `timing.throughput`):
- its batch-1 speedup [95% CI] with its factors fewer tokens x cheaper tokens (`speedup_decomposition`);
- its batch-B speedup [95% CI] with fewer tokens x less waiting x cheaper tokens;
- batch-B / batch-1, with the two-sided z test on the log ratio (the two were timed in separate
  interleaved runs on other items: independent estimates), and the verdict at p < 0.05: "grows",
  "shrinks", or "same" (no difference shown);
- the factor that moved most between the two: fewer tokens (B / 1), cheaper tokens (B / 1) or the
  waiting a batch adds (batch 1 has none), by |log| of its change. The two were measured on other
  items (the record's timed items; the seeded chunks), so a factor also moves with the items.
Rows are sorted by the ratio, largest first.
"""
from __future__ import annotations

import math

from tabulate import tabulate

from ..records.report import fmt_num, fmt_p, speedup_ci_cell, throughput_cell
from ..records.results import ResultRecord
from .headline import _label, log_ratio_test, records_table_main

COLUMNS = ["model", "bench", "method", "batch-1 speedup [95% CI] (fewer x cheaper)",
           "batch-B speedup [95% CI] (fewer x waiting x cheaper)", "B / 1", "p", "verdict", "moved most (B / 1)"]
ALPHA = 0.05


def shift(r: ResultRecord) -> dict:
    """The batch-B / batch-1 ratio, its p, the verdict and each factor's change (B over 1)."""
    t = r.timing["throughput"]
    ratio, p = log_ratio_test(t["throughput_speedup"], t.get("throughput_speedup_ci95"), r.speedup, r.speedup_ci95)
    verdict = "same" if p is None or p >= ALPHA else ("grows" if ratio > 1 else "shrinks")
    one = (r.speedup_decomposition or {}).get("total") or {}
    batched = t.get("decomposition", {}).get("total", {})
    factors = {}
    if one.get("token_factor") and batched.get("token_factor"):
        factors["fewer tokens"] = batched["token_factor"] / one["token_factor"]
    if one.get("per_token_factor") and batched.get("per_token_factor"):
        factors["cheaper tokens"] = batched["per_token_factor"] / one["per_token_factor"]
    if batched.get("waiting_factor"):
        factors["waiting"] = batched["waiting_factor"]
    return {"ratio": ratio, "p": p, "verdict": verdict, "factors": factors}


def shift_rows(records: list[ResultRecord]) -> list[list[str]]:
    rows = []
    for r in records:
        s = shift(r)
        one = (r.speedup_decomposition or {}).get("total") or {}
        most = max(s["factors"].items(), key=lambda kv: abs(math.log(kv[1])), default=None)
        rows.append((s["ratio"], [r.model, r.benchmark, _label(r),
                                  f"{speedup_ci_cell(r)} ({fmt_num(one.get('token_factor'), '.2f')} x "
                                  f"{fmt_num(one.get('per_token_factor'), '.2f')})",
                                  throughput_cell(r), f"{s['ratio']:.2f}", fmt_p(s["p"]), s["verdict"],
                                  f"{most[0]} {most[1]:.2f}" if most else "-"]))
    return [row for _, row in sorted(rows, key=lambda x: -x[0])]


def shift_markdown(records: list[ResultRecord], command: str) -> str:
    batched = [r for r in records if (r.timing or {}).get("throughput") and r.speedup]
    left = sorted({_label(r) for r in records} - {_label(r) for r in batched})
    table = tabulate(shift_rows(batched), headers=COLUMNS, tablefmt="github", disable_numparse=True)
    sizes = sorted({r.timing["throughput"]["batch_size"] for r in batched})
    out = (f"# Speedups from batch 1 to batch {', '.join(map(str, sizes)) or 'B'}\n\nRendered with `{command}`.\n\n"
           "Batch 1: the record's interleaved latency speedup; batch B: its throughput speedup, chunks of B items "
           "solved as one batch, interleaved with dense. Verdict at p < 0.05 (z test on the log ratio); "
           "\"moved most\": the factor whose change from batch 1 to batch B is largest (waiting: dense's computed "
           "row-steps per generated token over the method's, 1 at batch 1; the two sides were timed on other items, "
           f"so a factor also moves with the items).\n\n{table}\n")
    if left:
        out += f"\nNot re-timed at batch B (left out): {', '.join(left)}.\n"
    return out


def main(argv: list[str] | None = None) -> int:
    return records_table_main("litestage_bench.studies.batch_shift", __doc__, shift_markdown, argv)


if __name__ == "__main__":
    raise SystemExit(main())
