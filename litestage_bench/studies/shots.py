"""Few-shot demos 1 vs K on calibration items: accuracy (batched) and batch-1 latency, side by side.

`python -m litestage_bench.studies.shots --model M --bench B --limit 50 --timed 20 --shots 1,3 --out FILE`
answers the same calibration items with each number of demos (shared-header cache on, as in every
run), compares each setting's answers with the first one's (agreement, McNemar p) and times a
seeded subset at batch 1, the settings interleaved question by question in alternating order.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

from tabulate import tabulate

from ..engine.plan import DENSE
from ..evaluation.benchmarks import load_split, subset
from ..evaluation.runner import DEFAULT_BATCH_SIZE, Session, default_config, evaluate_items, log, seed_everything
from ..records import metrics, stats
from ..records.results import machine_info, write_text_atomic


def compare_shots(model: str, bench: str, limit: int, timed: int, shots: list[int],
                  batch_size: int = DEFAULT_BATCH_SIZE) -> list[dict]:
    seed_everything()
    session = Session.open(model)
    items = load_split(bench, "calib", limit=limit)
    reasoners = {k: session.reasoner(bench, default_config(session.loaded, shots=k)) for k in shots}
    answers = {k: evaluate_items(r, DENSE, {}, items, batch_size, f"{model} {bench} shots={k}")
               for k, r in reasoners.items()}
    clock = {k: [] for k in shots}
    timed_items = subset(items, timed)
    for r in reasoners.values():  # warm-up: allocator and header cache
        r.solve(items[0], DENSE)
    for i, q in enumerate(timed_items):
        for k in (shots if i % 2 == 0 else shots[::-1]):
            clock[k].append(reasoners[k].solve(q, DENSE).latency_s)
        log(f"[shots] timed {i + 1}/{len(timed_items)}")
    first = shots[0]
    rows = []
    for k in shots:
        correct = [r.correct for r in answers[k]]
        acc, ci = metrics.accuracy_ci95(correct)
        same = [a.prediction == b.prediction for a, b in zip(answers[k], answers[first])]
        rows.append({"shots": k, "n": len(items), "accuracy": acc, "accuracy_ci95": list(ci),
                     f"agreement_vs_{first}": sum(same) / len(same),
                     f"mcnemar_p_vs_{first}": stats.mcnemar_exact_p([r.correct for r in answers[first]], correct),
                     "n_timed": len(timed_items), "latency_median_s": statistics.median(clock[k]),
                     f"latency_ratio_vs_{first}": statistics.median(clock[k]) / statistics.median(clock[first]),
                     "header_tokens": len(reasoners[k].header.ids) if reasoners[k].header else None,
                     "tokens": {s: statistics.fmean(r.tokens[s] for r in answers[k]) for s in answers[k][0].tokens}})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litestage_bench.studies.shots", description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bench", default="obqa")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--timed", type=int, default=20)
    ap.add_argument("--shots", default="1,3")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    rows = compare_shots(args.model, args.bench, args.limit, args.timed, [int(s) for s in args.shots.split(",")])
    write_text_atomic(args.out, json.dumps({"command": " ".join(["python -m litestage_bench.studies.shots", *sys.argv[1:]]),
                                            "split": "calib", "machine": machine_info(), "rows": rows}, indent=1))
    print(tabulate([{k: v for k, v in r.items() if k != "tokens"} for r in rows], headers="keys", floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
