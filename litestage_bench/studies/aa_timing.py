"""The A/A check of the speedup interval: dense timed against a pipeline that runs dense's own
computation (an empty skip plan under another name), repeated on fresh draws of evaluation items.
The true speedup is 1.00, so a 95% interval should cover it in about 95% of the repeats.

    python -m litestage_bench.studies.aa_timing --repeats 40 --out results/intervals/aa_latency.md
    python -m litestage_bench.studies.aa_timing --timing batch=8 --chunks 3 --rounds 4 --repeats 1 \\
        --out results/intervals/aa_batch8.md

Defaults are the main job's timing (`pytest --benchmark-only`: 4 timed items, 1 interleaved round, at
batch 1). With `--timing batch=B` each repeat times `--chunks` chunks of B items at throughput
(evaluation/throughput.py). Repeat r draws its items with seed r. Each finished repeat is appended
to OUT's rows file (OUT with `.jsonl`), so a stopped run resumes after it; the markdown is rewritten
after every repeat. CPU cost: about repeats x items x 2 x seconds per question.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

from ..core.errors import UserError, print_error
from ..engine.plan import DENSE, SkipPlan
from ..evaluation.benchmarks import load_split, subset
from ..evaluation.runner import Session, default_config, log, seed_everything, time_items
from ..evaluation.throughput import chunks_of, time_chunks
from ..records.results import machine_info, write_text_atomic
from ..records.throughput import DEFAULT_CHUNK_ROUNDS, parse_timing, throughput_summary
from ..records.timing import paired_speedup

SAME = SkipPlan(name="dense-copy")  # no stage named: every stage runs dense's computation
# the main job's timing (grid/cases.py MAIN_TIMED and MAIN_ROUNDS; a test keeps them equal)
MAIN_TIMED, MAIN_ROUNDS = 4, 1


def wilson95(k: int, n: int) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95%)."""
    if n == 0:
        return math.nan, math.nan
    z, p = 1.959963984540054, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def one_repeat(reasoner, items: list, batch: int, timed: int, chunks: int, rounds: int, seed: int) -> dict:
    pipelines = {"dense": (DENSE, {}), "same": (SAME, {})}
    if batch == 1:
        drawn = subset(items, timed, seed)
        clock = time_items(reasoner, pipelines, drawn, warmup=0, progress=False, rounds=rounds)
        result = paired_speedup(clock["dense"], clock["same"])
        point, ci, refused = result["speedup"], result["ci95"], result["ci95_refused"]
    else:
        drawn = subset(items, batch * chunks, seed)
        measured = time_chunks(reasoner, pipelines, chunks_of(drawn, batch), rounds)
        result = throughput_summary(measured["dense"], measured["same"], batch)
        point, ci, refused = result["throughput_speedup"], result["throughput_speedup_ci95"], result["ci95_refused"]
    covered = None if refused else bool(ci[0] <= 1.0 <= ci[1])
    return {"seed": seed, "ids": [q.id for q in drawn], "speedup": point, "ci95": list(ci) if ci else None, "refused": refused,
            "covered": covered}


def markdown(rows: list[dict], settings: dict, command: str, cpu: str) -> str:
    judged = [r for r in rows if r["covered"] is not None]
    k = sum(r["covered"] for r in judged)
    lo, hi = wilson95(k, len(judged))
    widths = [(r["ci95"][1] / r["ci95"][0]) ** 0.5 - 1 for r in judged]  # half-width as a factor
    mode = "batch-1 latency" if settings["batch"] == 1 else f"throughput at batch {settings['batch']}"
    size = (f"{settings['timed']} timed items" if settings["batch"] == 1
            else f"{settings['chunks']} chunks of {settings['batch']} items")
    lines = [
        f"# A/A check of the speedup interval: {mode}", "",
        f"Produced by `{command}` on {cpu}, one thread.", "",
        f"Dense timed against an empty skip plan (dense's own computation) on {settings['model']} / "
        f"{settings['bench']}, {size}, {settings['rounds']} interleaved round(s) per repeat, items drawn afresh "
        "per repeat (seed = repeat). The true speedup is 1.00.", "",
        "| repeats | intervals given | cover 1.00 | coverage (Wilson 95%) | median speedup | "
        "median half-width | largest distance from 1 |",
        "|---|---|---|---|---|---|---|",
        f"| {len(rows)} | {len(judged)} | {k} | "
        + (f"{k / len(judged):.3f} [{lo:.3f}, {hi:.3f}]" if judged else "-") + " | "
        + (f"{statistics.median(r['speedup'] for r in rows):.3f}x" if rows else "-") + " | "
        + (f"±{statistics.median(widths) * 100:.1f}%" if widths else "-") + " | "
        + (f"{max(abs(r['speedup'] - 1) for r in rows) * 100:.1f}%" if rows else "-") + " |", "",
        "Per repeat:", "", "| seed | speedup | 95% CI | covers 1.00 |", "|---|---|---|---|"]
    for r in rows:
        ci = f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]" if r["covered"] is not None else f"refused: {r['refused']}"
        lines.append(f"| {r['seed']} | {r['speedup']:.3f}x | {ci} | {'-' if r['covered'] is None else r['covered']} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m litestage_bench.studies.aa_timing",
                                description="How often the speedup's 95% interval covers 1.00 when both sides run dense.")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--bench", default="obqa")
    p.add_argument("--timing", default="latency", help="latency (batch 1, default) or batch=B (throughput)")
    p.add_argument("--timed", type=int, default=MAIN_TIMED, help=f"batch 1: timed items per repeat (default {MAIN_TIMED}, the main job's)")
    p.add_argument("--chunks", type=int, default=3, help="batch B: chunks of B items per repeat (default 3)")
    p.add_argument("--rounds", type=int, default=None, help=f"interleaved rounds (default {MAIN_ROUNDS} at batch 1, {DEFAULT_CHUNK_ROUNDS} at batch B)")
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--out", required=True, help="the markdown to write; its rows go to OUT with .jsonl")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        batch = parse_timing(args.timing)
        rounds = args.rounds or (MAIN_ROUNDS if batch == 1 else DEFAULT_CHUNK_ROUNDS)
        if min(args.timed, args.chunks, args.repeats, rounds) < 1:
            raise UserError("--timed, --chunks, --repeats and --rounds must be at least 1", "pass positive counts")
        out = Path(args.out)
        rows_path = out.with_suffix(".jsonl")
        settings = {"model": args.model, "bench": args.bench, "batch": batch, "timed": args.timed,
                    "chunks": args.chunks, "rounds": rounds}
        rows = _read_rows(rows_path, settings)
        seed_everything()
        items = load_split(args.bench, "eval")
        session = Session.open(args.model)
        reasoner = session.reasoner(args.bench, default_config(session.loaded))
    except UserError as exc:
        print_error(exc)
        return 2
    command = "python -m litestage_bench.studies.aa_timing " + shlex.join(argv)
    cpu = machine_info()["cpu"]
    warm = subset(items, batch, 10_000)  # untimed warm-up, once per process
    for plan in (DENSE, SAME):
        reasoner.time_batch(warm, plan) if batch > 1 else reasoner.solve(warm[0], plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in range(len(rows), args.repeats):
        start = time.perf_counter()
        row = one_repeat(reasoner, items, batch, args.timed, args.chunks, rounds, seed)
        rows.append(row)
        with open(rows_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"settings": settings, **row}) + "\n")
        write_text_atomic(out, markdown(rows, settings, command, cpu))
        log(f"[aa] repeat {seed + 1}/{args.repeats}: {row['speedup']:.3f}x {row['ci95']} covers 1: {row['covered']} "
            f"({time.perf_counter() - start:.0f} s)")
    write_text_atomic(out, markdown(rows, settings, command, cpu))
    return 0


def _read_rows(path: Path, settings: dict) -> list[dict]:
    """Finished repeats of the same settings, in order; another run's rows file is refused."""
    if not path.exists():
        return []
    rows, lines = [], path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            write_text_atomic(path, "".join(f"{kept}\n" for kept in lines[:n - 1]))  # cut off by a kill: redone
            break
        if row.get("settings") != settings:
            raise UserError(f"{path} line {n} holds repeats of other settings ({row.get('settings')})",
                            "use another --out, or the same settings as before")
        rows.append({k: v for k, v in row.items() if k != "settings"})
    return rows


if __name__ == "__main__":
    sys.exit(main())
