"""Throughput at batch B for committed records, their answers checked, their latency kept:

    python -m litestage_bench.studies.throughput_retime RECORD.json ... --timing batch=8 --out-dir results/throughput

Each record's own `litestage-bench run` command gives the model, numerics, items, method and policy;
its stored reasoner settings are used as they are. Seeded chunks of B of its items are solved by dense
and the method as one batch each, interleaved (`--chunks`, `--chunk-rounds`; docs/measuring.md,
"Throughput at batch B"), and every chunk's answers must equal the record's (exact numerics), or the
record is refused. Writes OUT_DIR/NAME.json: the record with `timing.throughput` added and the
command in `extra.throughput_command`; nothing else changes. Records with the same model share one
load. CPU cost per record: chunks x B items x 2 sides x (rounds + 1 warm-up chunk) at batched speed.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..core.errors import UserError, print_error
from ..engine.method import model_facts
from ..engine.plan import DENSE
from ..evaluation.benchmarks import check_items, load_split
from ..evaluation.reasoner import ReasonerConfig
from ..evaluation.runner import Session, checked_plan, log, method_callbacks, throughput_timing
from ..records.results import atomic_write, load_record
from ..records.throughput import DEFAULT_CHUNK_ROUNDS, DEFAULT_CHUNKS, parse_timing


def run_args(path: str):
    """The parsed `litestage-bench run` command a record was made with."""
    from ..cli import build_parser
    rec = load_record(path)
    words = shlex.split(rec.command or "")
    if words[:2] != ["litestage-bench", "run"]:
        raise UserError(f"{path} was not made by `litestage-bench run`", "give records written by `run --out`")
    return rec, build_parser().parse_args(words[1:])


def retime(path: str, batch: int, chunks: int, rounds: int, out_dir: Path, sessions: dict, command: str) -> Path:
    from ..cli import method_from_args
    rec, args = run_args(path)
    if rec.method == "dense":
        raise UserError(f"{path} is dense's own record: there is nothing to compare", "give a method's record")
    method = method_from_args(args)
    if json.loads(json.dumps(method.describe())) != rec.policy:
        raise UserError(f"{path}: its command's method and policy are not the record's", "re-run the record")
    items = check_items(load_split(args.bench, args.split, limit=args.limit, data_dir=args.data_dir, seed=args.seed),
                        args.bench, args.split, args.data_dir)
    if [q.id for q in items] != [it.id for it in rec.items]:
        raise UserError(f"{path}: its command selects other items than the record holds", "re-run the record")
    key = (args.model, rec.numerics)
    if key not in sessions:
        sessions.clear()  # one model in memory at a time
        sessions[key] = Session.open(args.model, dtype=args.dtype, device=args.device, numerics=args.numerics)
    session = sessions[key]
    reasoner = session.reasoner(args.bench, ReasonerConfig(**rec.config), args.data_dir)
    facts = model_facts(session.executor, session.loaded.name)
    pipelines = {"method": (checked_plan(method, facts), method_callbacks(method)), "dense": (DENSE, {})}
    label = f"{rec.model} {rec.benchmark} {rec.method}"
    throughput = throughput_timing(reasoner, pipelines, items, rec.items, (batch, chunks, rounds), args.seed, label)
    data = json.loads(Path(path).read_text())
    data["timing"]["throughput"] = throughput
    data.setdefault("extra", {})["throughput_command"] = command
    out = out_dir / Path(path).name

    def dump(fh) -> None:
        json.dump(data, fh, indent=1, allow_nan=False)
        fh.write("\n")

    atomic_write(out, dump)
    t = throughput
    log(f"[{label}] batch {batch}: {t['throughput_speedup']:.2f}x {t['throughput_speedup_ci95']} -> {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m litestage_bench.studies.throughput_retime",
                                     description="Add throughput at batch B to committed records.")
    parser.add_argument("records", nargs="+", metavar="RECORD")
    parser.add_argument("--timing", default="batch=8", help="batch=B (default batch=8)")
    parser.add_argument("--chunks", type=int, default=DEFAULT_CHUNKS)
    parser.add_argument("--chunk-rounds", type=int, default=DEFAULT_CHUNK_ROUNDS)
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    command = "python -m litestage_bench.studies.throughput_retime " + shlex.join(argv)
    sessions: dict = {}
    try:
        batch = parse_timing(args.timing)
        if batch < 2 or min(args.chunks, args.chunk_rounds) < 1:
            raise UserError("--timing must be batch=B with B >= 2, --chunks and --chunk-rounds at least 1",
                            "e.g. --timing batch=8 --chunks 4 --chunk-rounds 4")
        for path in args.records:
            retime(path, batch, args.chunks, args.chunk_rounds, Path(args.out_dir), sessions, command)
    except UserError as exc:
        print_error(exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
