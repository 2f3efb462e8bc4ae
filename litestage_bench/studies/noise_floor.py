"""The numeric noise floor: how often dense disagrees with itself when nothing that matters changed.

`python -m litestage_bench.studies.noise_floor --model M --numerics N [--benches B,..] [--limit 50]` runs the
dense reasoner on the same evaluation items under a reference setting (batch 1, one thread, options
decoded as one batch, cross-stage KV reuse, shared-header cache) and under variants that should not
change anything, then counts answer flips and identical outputs per variant. Every run is saved
compactly under `results/numerics/runs/` (resumable, one file per model x dtype x benchmark x
variant); the summary goes to `results/numerics/noise_floor.{json,md}`, which records read through
``noise_floor_for``. Runs are keyed by numerics (``numerics.NUMERICS``; the run files' ``dtype``
field holds it, as it did when numerics were only dtypes). The summary also compares each numerics'
runs with float32's on the same items and variant: that is a different rounding of the same model,
not noise, and it is reported apart (``vs_float32``). CPU only: on CUDA nothing is measured, but records keep the same fields.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import sys
from pathlib import Path

import torch
from tabulate import tabulate

from ..core.errors import UserError
from ..engine.numerics import NUMERICS
from ..engine.plan import DENSE
from ..evaluation.benchmarks import load_split
from ..records.noise import DEFAULT_DIR, compact, compare
from ..records.results import machine_info, write_text_atomic

# variant -> what it changes relative to the reference
VARIANTS = {
    "threads2": "2 threads instead of 1",
    "options_one_at_a_time": "Analyze options decoded one at a time instead of as one batch",
    "reprefill": "every stage re-prefills its prompt (from the header cache) instead of reusing the previous stage's KV",
    "no_header_cache": "the few-shot header is prefilled with each prompt instead of copied from its cache",
    "batched": "8 questions per batch (accuracy runs) instead of batch 1",
    "other_cpu": "the reference setting rerun on another CPU than the saved reference run's",
}
# Run files written before they recorded their CPU were all measured on the project's AMD EPYC machines
# (noise_floor.json's machine up to then); `_run_cpu` reads that for them.
LEGACY_RUN_CPU = "AMD EPYC"


# ------------------------------------------------------------------------------------------------
# measuring


def _run_cpu(run: dict) -> str:
    return run.get("cpu", LEGACY_RUN_CPU)


def _run_variant(session, bench: str, variant: str, items) -> list[dict]:
    from ..evaluation.runner import default_config, evaluate_items, log, time_items

    overrides = {"options_one_at_a_time": {"batch_options": False}, "reprefill": {"reuse_kv": False},
                 "no_header_cache": {"header_cache": False}}.get(variant, {})
    reasoner = session.reasoner(bench, default_config(session.loaded, **overrides))
    label = f"noise {session.loaded.name} {session.loaded.numerics} {bench} {variant}"
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if variant == "threads2" else 1)
    try:
        if variant == "batched":
            results = evaluate_items(reasoner, DENSE, {}, items, 8, label)
        else:
            results = time_items(reasoner, {"dense": (DENSE, {})}, items, label, warmup=0, rounds=1)["dense"]
    finally:
        torch.set_num_threads(threads)
    log(f"[{label}] done")
    return [compact(r) for r in results]


def measure(model: str, dtype: str, benches: list[str], limit: int, variants: list[str], out_dir: Path,
            command: str, reference: bool = True) -> list[dict]:
    from ..evaluation.runner import Session, log

    wanted = (["reference"] if reference else []) + variants
    items_by_bench = {bench: load_split(bench, "eval", limit=limit) for bench in benches}
    for bench, items in items_by_bench.items():  # before the model loads: a run that would replace another stops here
        for variant in wanted:
            kept_run(out_dir / "runs" / f"{model}_{dtype}_{bench}_{variant}.json", [q.id for q in items])
    session = Session.open(model, numerics=dtype)
    cpu = machine_info()["cpu"]
    runs = out_dir / "runs"
    rows = []
    for bench in benches:
        items = items_by_bench[bench]
        ids = [q.id for q in items]
        saved: dict[str, dict] = {}
        for variant in wanted:
            path = runs / f"{model}_{dtype}_{bench}_{variant}.json"
            kept = kept_run(path, ids)
            if kept is not None:
                saved[variant] = kept  # resumed, or a run on more items: compared on these
                log(f"[noise] {path.name}: already measured")
                continue
            if variant == "other_cpu" and "reference" in saved and _run_cpu(saved["reference"]) == cpu:
                log(f"[noise] {model} {dtype} {bench} other_cpu: skipped: the reference run was measured on this "
                    f"CPU ({cpu}); rerun it on another one")
                continue
            saved[variant] = {"model": model, "dtype": dtype, "bench": bench, "variant": variant, "ids": ids,
                              "command": command, "cpu": cpu, "items": _run_variant(session, bench, variant, items)}
            write_text_atomic(path, json.dumps(saved[variant]))
        if "reference" in saved:
            rows += [comparison_row(saved["reference"], saved[v]) for v in variants if v in saved]
    return rows


def kept_run(path: Path, ids: list[str]) -> dict | None:
    """The saved run at `path` if it covers these items (the same, or more: compared on these), None
    if there is none; a run on other items is not replaced (one run per variant: a committed run)."""
    if not path.exists():
        return None
    kept = json.loads(path.read_text())
    if not set(ids) <= set(kept.get("ids", [])):
        raise UserError(f"{path} holds a run on {len(kept.get('ids', []))} other items, which this run on "
                        f"{len(ids)} would replace",
                        "pass the --limit it was made with (or a smaller one), or move the file away")
    return kept


def comparison_row(reference: dict, run: dict) -> dict:
    """One table row: a variant's run against its reference run (same model, dtype, benchmark)."""
    return {"model": run["model"], "dtype": run["dtype"], "bench": run["bench"], "variant": run["variant"],
            "change": VARIANTS[run["variant"]], "cpu": f"{_run_cpu(reference)} / {_run_cpu(run)}",
            **compare(reference["items"], run["items"])}


def load_runs(out_dir: Path) -> dict[tuple[str, str, str, str], dict]:
    """Every saved run by (model, numerics, benchmark, variant)."""
    runs = {}
    for path in sorted((out_dir / "runs").glob("*.json")):
        d = json.loads(path.read_text())
        runs[(d["model"], d["dtype"], d["bench"], d["variant"])] = d
    return runs


def rows_from_runs(runs: dict[tuple[str, str, str, str], dict]) -> list[dict]:
    """Comparison rows from every saved run that has its reference."""
    return [comparison_row(runs[(m, dt, b, "reference")], run) for (m, dt, b, v), run in sorted(runs.items())
            if v in VARIANTS and (m, dt, b, "reference") in runs]


def vs_float32_rows(runs: dict[tuple[str, str, str, str], dict]) -> list[dict]:
    """Each non-float32 run against float32's run of the same model, benchmark and variant on the same
    items: how far the other rounding moves answers (not a noise floor)."""
    rows = []
    for (m, dt, b, v), run in sorted(runs.items()):
        ref = runs.get((m, "float32", b, v))
        if dt == "float32" or ref is None:
            continue
        rows.append({"model": m, "dtype": dt, "bench": b, "variant": v,
                     "cpu": f"{_run_cpu(ref)} / {_run_cpu(run)}", **compare(ref["items"], run["items"])})
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per model|dtype: the worst answer-flip rate and lowest identical-output rate over variants."""
    out: dict[str, dict] = {}
    for r in rows:
        key = f"{r['model']}|{r['dtype']}"
        e = out.setdefault(key, {"answer_flip_rate": 0.0, "identical_output_rate": 1.0, "n_items": 0,
                                 "answer_flips": 0, "comparisons": 0, "threads": 1, "variants": []})
        if r["variant"] not in e["variants"]:
            e["variants"].append(r["variant"])
        if r["variant"] == "threads2":  # only a measured thread comparison may be claimed
            e["threads"] = "1 (reference) vs 2"
        if r["variant"] == "other_cpu":
            e.setdefault("cpus_compared", []).append(f"{r['bench']}: {r['cpu']}")
        e["answer_flip_rate"] = max(e["answer_flip_rate"], r["answer_flip_rate"])
        e["identical_output_rate"] = min(e["identical_output_rate"], r["identical_outputs"])
        e["answer_flips"] += r["answer_flips"]
        e["comparisons"] += r["n"]
        e["n_items"] = max(e["n_items"], r["n"])
        e["pooled_answer_flip_rate"] = e["answer_flips"] / e["comparisons"]
    return out


def current_command(command: str) -> str:
    """A stored command under the study's module path of today (runs measured before the package was
    laid out in folders name `litestage_bench.noise_floor`)."""
    return command.replace("python -m litestage_bench.noise_floor ", "python -m litestage_bench.studies.noise_floor ")


def write_summary(out_dir: Path, command: str) -> None:
    """Rebuild the summary files from every saved run; a lock serialises concurrent measuring processes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".noise_floor.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _merge_summary(out_dir, command)


def _merge_summary(out_dir: Path, command: str) -> None:
    path = out_dir / "noise_floor.json"
    old = json.loads(path.read_text()) if path.exists() else {"rows": [], "commands": []}
    # every saved run is compared afresh (older summaries lack newer fields); a row whose runs are gone stays
    runs = load_runs(out_dir)
    fresh = rows_from_runs(runs)
    replaced = {(r["model"], r["dtype"], r["bench"], r["variant"]) for r in fresh}
    rows = [r for r in old["rows"] if (r["model"], r["dtype"], r["bench"], r["variant"]) not in replaced] + fresh
    rows.sort(key=lambda r: (r["model"], r["dtype"], r["bench"], r["variant"]))
    # the commands that measured the runs (each run file keeps its own), then this one
    measured = [run.get("command") for run in runs.values()]
    commands = list(dict.fromkeys(current_command(c) for c in [*old.get("commands", []), *filter(None, measured), command]))
    versus = vs_float32_rows(runs)
    doc = {"commands": commands, "machine": machine_info(), "variants": VARIANTS, "rows": rows,
           "by_config": summarise(rows), "vs_float32": versus}
    write_text_atomic(path, json.dumps(doc, indent=1))
    table = tabulate([[r["model"], r["dtype"], r["bench"], r["variant"], r.get("cpu", ""), r["n"],
                       f"{r['answer_flips']} ({r['answer_flip_rate']:.1%})", f"{r['identical_outputs']:.1%}",
                       f"{r['identical_recall']:.1%}", f"{r['accuracy_reference']:.3f} / {r['accuracy_variant']:.3f}"]
                      for r in rows],
                     headers=["model", "numerics", "bench", "variant", "CPU (reference / variant)", "n", "answer flips",
                              "identical outputs", "identical recall", "acc ref / variant"], tablefmt="github")
    versus_table = tabulate([[r["model"], r["dtype"], r["bench"], r["variant"], r["cpu"], r["n"],
                              f"{r['answer_flips']} ({r['answer_flip_rate']:.1%})", f"{r['identical_outputs']:.1%}",
                              f"{r['accuracy_reference']:.3f} / {r['accuracy_variant']:.3f}"] for r in versus],
                            headers=["model", "numerics", "bench", "setting", "CPU (float32 / numerics)", "n",
                                     "answers changed", "identical outputs", "acc float32 / numerics"],
                            tablefmt="github")
    worst = tabulate([[k, v["n_items"], f"{v['answer_flip_rate']:.1%}", f"{v['pooled_answer_flip_rate']:.2%}",
                       f"{v['identical_output_rate']:.1%}"] for k, v in sorted(doc["by_config"].items())],
                     headers=["model|numerics", "items", "worst flip rate", "pooled flip rate", "lowest identical outputs"],
                     tablefmt="github")
    variants = "\n".join(f"- `{k}`: {v}" for k, v in VARIANTS.items())
    md = (f"# Numeric noise floor (dense vs itself)\n\nReference: batch 1, 1 thread, options as one batch, "
          f"cross-stage KV reuse, header cache. Variants:\n{variants}\n\n{table}\n\n## Per model and numerics\n\n"
          f"{worst}\n\n## Against float32 (a different rounding of the same model, not noise)\n\n"
          f"Each run compared with float32's run of the same items and setting.\n\n{versus_table}\n\nEach row's runs were measured on the CPUs its CPU column names. Summary written on: "
          f"{doc['machine']['cpu']}, torch {doc['machine']['torch']}, "
          f"transformers {doc['machine']['transformers']}.\n\nProduced by:\n"
          + "\n".join(f"- `{c}`" for c in commands) + "\n")
    write_text_atomic(out_dir / "noise_floor.md", md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litestage_bench.studies.noise_floor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--numerics", "--dtype", dest="numerics", choices=list(NUMERICS),
                    help="float32, bfloat16 or bf16-matmul (numerics.py)")
    ap.add_argument("--benches", default="obqa,csqa,strategyqa")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out-dir", default=str(DEFAULT_DIR))
    ap.add_argument("--no-reference", action="store_true",
                    help="measure only the variants (e.g. float32's batched run, to compare another numerics' with)")
    ap.add_argument("--summary-only", action="store_true",
                    help="measure nothing: rebuild the summary from the saved runs (after an interrupted run)")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"noise_floor: error: unknown variant(s) {unknown} -- fix: use {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    command = "python -m litestage_bench.studies.noise_floor " + " ".join(sys.argv[1:] if argv is None else argv)
    out_dir = Path(args.out_dir)
    if args.summary_only:
        write_summary(out_dir, command)
        return 0
    if not (args.model and args.numerics):
        ap.error("--model and --numerics are required unless --summary-only")
    try:
        rows = measure(args.model, args.numerics, args.benches.split(","), args.limit, variants, out_dir, command,
                       reference=not args.no_reference)
    except UserError as err:
        print(f"noise_floor: error: {err}", file=sys.stderr)
        return 2
    write_summary(out_dir, command)
    print(tabulate(rows, headers="keys", floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
