"""Measurements behind the reasoner's defaults (dtype, per-stage caps, answer rule).

`python -m litestage_bench.studies.tuning --model M --bench B --limit N --out results/tuning-M.json` runs the
dense reasoner on N *calibration* items under several settings (same items for each) and writes
accuracy per answer rule, tokens, latency and prediction agreement with the first setting.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from tabulate import tabulate

from ..evaluation.benchmarks import load_split
from ..evaluation.runner import Session, default_config, model_facts, run_items
from ..methods.registry import make_method
from ..records.results import machine_info, write_text_atomic

CAP_SETTINGS = {"short": {"recall": 24, "analyze": 16, "summarize": 12},
                "default": {"recall": 48, "analyze": 32, "summarize": 16},
                "long": {"recall": 96, "analyze": 64, "summarize": 24}}


def measure(model: str, bench: str, limit: int, settings: list[tuple[str, str]], shots: int | None) -> list[dict]:
    """settings: (dtype, cap-setting name) pairs, run in order on the same calibration items."""
    rows, reference = [], None
    items = load_split(bench, "calib", limit=limit)
    sessions: dict[str, Session] = {}
    for dtype, caps in settings:
        session = sessions.setdefault(dtype, Session.open(model, dtype=dtype))
        cfg = default_config(session.loaded, shots=shots, max_new_tokens=dict(CAP_SETTINGS[caps]))
        reasoner = session.reasoner(bench, cfg)
        start = time.perf_counter()
        res = run_items(reasoner, make_method("dense"), model_facts(session.executor, model), items,
                        f"{model} {bench} {dtype} {caps}", warmup=1, progress=False)
        preds = [r.predictions_by_rule for r in res]
        reference = reference or preds
        row = {"model": model, "bench": bench, "n": len(items), "dtype": dtype, "caps": caps,
               "seconds_per_question": (time.perf_counter() - start) / len(items)}
        for rule in ("regex", "letter", "cloze"):
            row[f"acc_{rule}"] = sum(p[rule] == r.answer for p, r in zip(preds, res)) / len(res)
            row[f"agree_{rule}"] = sum(p[rule] == q[rule] for p, q in zip(preds, reference)) / len(res)
        for stage in ("recall", "analyze", "summarize"):
            row[f"tokens_{stage}"] = statistics.mean(r.tokens[stage] for r in res)
        rows.append(row)
        print(tabulate([row], headers="keys", floatfmt=".3f"), file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litestage_bench.studies.tuning", description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--bench", default="obqa")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--shots", type=int, default=None)
    ap.add_argument("--setting", action="append", default=None,
                    help="DTYPE:CAPS, e.g. bfloat16:default (repeatable; caps: short, default, long)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    settings = [tuple(s.split(":")) for s in (args.setting or ["float32:default", "bfloat16:default", "bfloat16:long"])]
    rows = measure(args.model, args.bench, args.limit, settings, args.shots)
    import json
    write_text_atomic(args.out, json.dumps({"command": " ".join(["python -m litestage_bench.studies.tuning", *sys.argv[1:]]),
                                            "machine": machine_info(), "rows": rows}, indent=1))
    print(tabulate(rows, headers="keys", floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
