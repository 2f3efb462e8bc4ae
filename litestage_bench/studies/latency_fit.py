"""Fit the latency model of skip plans (records/latency_model.py) from the committed timed records,
one fit per model x numerics x device x CPU, and check it honestly: each record's speedup is
predicted by a fit made without that record (leave one record out).

    python -m litestage_bench.studies.latency_fit --out results/latency/
    python -m litestage_bench.studies.latency_fit --fit results/latency/fit_....json --predict RECORD.json

Writes one `fit_<model>_<numerics>_<device>_<cpu>.json` per group (costs, prompt constants, in-sample
residuals, the records used, each record's measured / fitted / held-out speedup) and `errors.md`:
|predicted / measured - 1| of the held-out predictions, median and 95th percentile, overall, per model
and per method.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..core.errors import UserError, print_error
from ..records.latency_data import RecordData, group_key, model_facts, prompt_constants, record_data, timed_records
from ..records.latency_features import FEATURES
from ..records.latency_model import LatencyFit, blocks_for, fit_blocks, fit_file_name, load_fit, predict_record
from ..records.results import load_record, write_text_atomic

GOAL = {"median": 0.05, "p95": 0.15, "records": 100}  # the project's stated target


def load_groups(root: str | Path) -> tuple[dict[tuple, list[RecordData]], dict, dict]:
    """The timed records under `root` as latency data by (model, numerics, device, cpu), the models'
    facts (layers, attention FLOP share) and the prompt constants per model and benchmark."""
    found = timed_records(root)
    if not found:
        raise UserError(f"no interleaved-timed records under {root}", "pass the results folder (--results)")
    records = [r for _, r in found]
    facts, by_model = model_facts(records), defaultdict(list)
    for r in records:
        by_model[r.model].append(r)
    consts = {m: prompt_constants(rs) for m, rs in by_model.items()}
    groups: dict[tuple, list[RecordData]] = defaultdict(list)
    for path, rec in found:
        if rec.model not in facts:
            continue  # no static whole-layer plan tells this model's layer count
        data = record_data(path, rec, consts[rec.model])
        if data is not None:
            groups[group_key(rec)].append(data)
    return dict(groups), facts, consts


def empty_fit(key: tuple, facts: dict, consts: dict) -> LatencyFit:
    model, numerics, device, cpu = key
    f = facts[model]
    return LatencyFit({"model": model, "numerics": numerics, "device": device, "cpu": cpu}, f["num_layers"],
                      f["attn_share"], {n: 0.0 for n in FEATURES}, consts[model])


def _quantiles(errors: list[float]) -> dict:
    a = np.abs(np.asarray(errors))
    return {"n": int(len(a)), "median": float(np.median(a)) if len(a) else None,
            "p95": float(np.percentile(a, 95)) if len(a) else None}


def fit_group(key: tuple, data: list[RecordData], facts: dict, consts: dict) -> LatencyFit:
    """The group's fit on all its records, with in-sample residuals and held-out predictions
    (each record predicted by a fit on the group's other records)."""
    base = empty_fit(key, facts, consts)
    blocks = blocks_for(base, data)
    fit = fit_blocks(base, blocks)
    theta, rel = fit.theta, []
    # stricter: a fit without any record of the same benchmark (whose dense side, timed on the same
    # items in every record of that benchmark, the record-level hold-out still sees through its siblings)
    benches = {rd.record.benchmark for rd in data}
    without = {bench: [b for rd, b in zip(data, blocks) if rd.record.benchmark != bench] for bench in benches}
    without = {bench: fit_blocks(base, rest).theta if rest else None for bench, rest in without.items()}
    for rd, b in zip(data, blocks):
        rest = [o for o in blocks if o is not b]
        scale = math.exp(fit.residuals[b.path]["log_time_scale"])
        rel += list((scale * (b.method @ theta) / np.where(b.seconds > 0, b.seconds, np.nan) - 1)[b.seconds > 0])
        other = without[rd.record.benchmark]
        fit.residuals[b.path].update(
            method=rd.record.method, benchmark=rd.record.benchmark, n_items=len(rd.items),
            measured=rd.record.speedup, fitted=b.speedup(theta),
            held_out=b.speedup(fit_blocks(base, rest).theta) if rest else None,
            held_out_benchmark=b.speedup(other) if other is not None else None)
    fit.records = [rd.path for rd in data]
    fit.fit = {"n_records": len(data), "n_items": sum(len(rd.items) for rd in data),
               "item_stage_rows": len(rel), "row_relative_error": _quantiles(rel)}
    for kind in ("fitted", "held_out", "held_out_benchmark"):
        fit.fit[f"speedup_error_{kind}"] = _quantiles(errors(fit, kind))
    return fit


def errors(fit: LatencyFit, kind: str = "held_out") -> list[float]:
    """predicted / measured - 1 of each record's speedup (`kind`: fitted, held_out, held_out_benchmark)."""
    return [r[kind] / r["measured"] - 1 for r in fit.residuals.values() if r.get(kind)]


def _row(name: str, rows: list[tuple]) -> str:
    """One table row: records, then median and p95 of each kind of error."""
    cells = [name, str(sum(1 for r in rows if r[2] is not None))]
    for k in (2, 3):
        q = _quantiles([r[k] for r in rows if r[k] is not None])
        cells += [f"{100 * q['median']:.1f}%", f"{100 * q['p95']:.1f}%"] if q["n"] else ["-", "-"]
    cells.insert(4, str(sum(1 for r in rows if r[3] is not None)))
    return "| " + " | ".join(cells) + " |"


def render(fits: list[LatencyFit], command: str) -> str:
    """errors.md: held-out speedup errors overall, per model, per method and per fit."""
    rows = []  # (model, method, error held out, error held out with its benchmark, fit label)
    for f in fits:
        g = f.group
        label = f"{g['model']} {g['numerics']} {g['device']} {g['cpu']}"
        for r in f.residuals.values():
            rows.append((g["model"], r["method"], *(r[k] / r["measured"] - 1 if r.get(k) else None
                                                    for k in ("held_out", "held_out_benchmark")), label))
    q = _quantiles([r[2] for r in rows if r[2] is not None])
    met = q["n"] >= GOAL["records"] and q["median"] <= GOAL["median"] and q["p95"] <= GOAL["p95"]
    head = ("| {} | records | median | p95 | records (bench out) | median (bench out) | p95 (bench out) |",
            "|---|---|---|---|---|---|---|")
    lines = ["# Latency model: held-out speedup error", "", f"Command: `{command}`", "",
             "Error = |predicted / measured - 1| of a record's speedup over dense on its timed items, predicted "
             "by a fit made without that record (leave one record out). *Bench out*: a fit made without any "
             "record of the same benchmark (dense's side of a record is timed on the same items in every "
             "record of its benchmark, so the first hold-out still sees dense's timings through the "
             "record's siblings). Fits are per model x numerics x device x CPU (records/latency_model.py).", "",
             f"Goal: median <= {GOAL['median']:.0%}, p95 <= {GOAL['p95']:.0%} over >= {GOAL['records']} "
             f"interleaved-timed records: {'met' if met else 'not met'} (leave one record out, "
             f"{q['n']} records).", "", head[0].format("set"), head[1], _row("all", rows), "",
             "## Per model", "", head[0].format("model"), head[1]]
    lines += [_row(m, [r for r in rows if r[0] == m]) for m in sorted({r[0] for r in rows})]
    lines += ["", "## Per method", "", head[0].format("method"), head[1]]
    lines += [_row(m, [r for r in rows if r[1] == m]) for m in sorted({r[1] for r in rows})]
    lines += ["", "## Per fit (model x numerics x device x CPU)", "", head[0].format("fit"), head[1]]
    lines += [_row(lab, [r for r in rows if r[4] == lab]) for lab in dict.fromkeys(r[4] for r in rows)]
    return "\n".join(lines + ["", LIMITS]) + "\n"


LIMITS = """## What the records do not carry

- Dense's seconds per timed item: records made before `timing["dense_rounds"]` keep dense only as
  geometric means over the timed items (per stage, per stage's prefill, per question); the fit uses
  those, and each record's pairs only through its speedup decomposition.
- Dense's prefill tokens: estimated from the method item's own prompt counts and the benchmark's
  prompt constants (exact for Recall and Analyze; Summarize's within ~5%).
- Prompt tokens of untimed items (an accuracy pass): the benchmark's medians stand in.
- Per-option token counts of Analyze: its decode steps are estimated as tokens / options (the batch
  decodes until its longest option ends). SkipDecode's Analyze decode measures ~14% slower than
  predicted, the main part of its error; options ending far apart may be why, the records cannot say.
- A kind of plan that a group holds once (drafting, in a group with one SelfSpec record) is predicted
  by a fit that has never seen one; the costs of small groups are not individually meaningful."""


def predict(fit_path: str, records: list[str]) -> str:
    """Each record's speedup predicted by a saved fit, beside the measured one (its timed items)."""
    fit = load_fit(fit_path)
    lines = []
    for path in records:
        rec = load_record(path)
        data = record_data(path, rec, fit.prompt) if rec.benchmark in fit.prompt else None
        if data is None:
            raise UserError(f"{path} has no timed items with dense's tokens for {fit_path}'s benchmarks "
                            f"({', '.join(sorted(fit.prompt))})",
                            "pass an interleaved-timed record of a fitted benchmark")
        other = "" if group_key(rec) == tuple(fit.group[k] for k in ("model", "numerics", "device", "cpu")) \
            else " (record from another model x numerics x device x CPU than the fit)"
        lines.append(f"{path}: predicted {predict_record(fit, data):.3f}x, measured {rec.speedup:.3f}x{other}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litestage_bench.studies.latency_fit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="folder for the fits and errors.md (e.g. results/latency/)")
    ap.add_argument("--results", default="results", help="folder searched for timed records (default results)")
    ap.add_argument("--fit", help="with --predict: a saved fit (fit_*.json) instead of fitting")
    ap.add_argument("--predict", nargs="+", metavar="RECORD", help="records whose speedup --fit predicts")
    args = ap.parse_args(argv)
    if bool(args.fit) != bool(args.predict) or bool(args.fit) == bool(args.out):
        ap.error("pass --out DIR (fit), or --fit FIT.json --predict RECORD... (predict)")
    command = "python -m litestage_bench.studies.latency_fit " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        if args.fit:
            print(predict(args.fit, args.predict))
            return 0
        groups, facts, consts = load_groups(args.results)
        fits = [fit_group(key, groups[key], facts, consts) for key in sorted(groups)]
        out = Path(args.out)
        for f in fits:
            write_text_atomic(out / fit_file_name(f.group), json.dumps({**f.to_dict(), "command": command}, indent=1) + "\n")
        text = render(fits, command)
        write_text_atomic(out / "errors.md", text)
    except UserError as err:
        print_error(err)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
