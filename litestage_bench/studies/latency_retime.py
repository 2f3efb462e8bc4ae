"""Batch-1 latency of several records at once, against one dense
(`litestage-bench retime-latency RECORD.json ... --timed 20 --rounds 2 --out-dir results/large`).

The records are `run` records of one model, benchmark, items, reasoner settings and `--dense-record`,
typically written with `run --accuracy-only`. Per timed question and round, dense and every method
solve it back to back, the order alternating (runner.time_together): k methods cost k + 1 solves per
round instead of the 2k of k separate `run`s, which on the 1.5B (about a minute per batch-1 solve)
saves most of an hour per record. Answers are read back and must be reproduced, as with
`run --answers-from`.

Each record goes to OUT_DIR/NAME.json (NAME: the given record's) as that method's own
`run ... --answers-from RECORD --out OUT_DIR/NAME.json` would write it (its `command`), with the
records it was timed beside in `timing.timed_with` and this command in `extra.timing_command`. The
timed questions are kept in OUT_DIR/FIRST.json.together.partial.jsonl until every record is written:
the same command continues after them on a machine of the same CPU label.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from ..core.errors import UserError
from ..evaluation.reasoner import ReasonerConfig
from ..evaluation.runner import Session, log, model_facts, time_together
from ..records.results import write_record
from .throughput_retime import group_key


def own_command(command: str, answers_from: str, out: Path, timed: int | None, rounds: int) -> str:
    """The record's `run` command as it would time this record alone: the given timing, its answers
    read from `answers_from`, written to `out` (--accuracy-only dropped)."""
    words = [w for w in shlex.split(command) if w != "--accuracy-only"]
    settings = {"--timed": str(timed or 0), "--rounds": str(rounds), "--answers-from": answers_from, "--out": str(out)}
    for flag, value in settings.items():
        if flag in words:
            words[words.index(flag) + 1] = value
        else:
            words += [flag, value]
    return shlex.join(words)


def check_group(entries: list[tuple], out_dir: Path) -> None:
    """One model, benchmark, items, settings and dense record; no dense record among them; none
    written over itself."""
    for path, rec, args, _ in entries:
        if rec.method == "dense":
            raise UserError(f"{path} is dense's own record: it is the side every method is timed against",
                            "give methods' records")
        if not args.dense_record:
            raise UserError(f"{path}: its command names no --dense-record, whose answers the timing must reproduce",
                            "re-run it with --dense-record")
        if (out_dir / Path(path).name).resolve() == Path(path).resolve():
            raise UserError(f"{path} would be overwritten by its own timed copy", "give another --out-dir")
    first = entries[0]
    for path, rec, args, _ in entries[1:]:
        if group_key(rec, args) != group_key(first[1], first[2]) or args.dense_record != first[2].dense_record:
            raise UserError(f"{path} and {first[0]} differ in model, benchmark, items, settings or dense record",
                            "time records of one model, benchmark and dense record together")


def check_batch_sizes(entries: list[tuple], facts) -> None:
    """The group re-runs one batch of each record at its first record's batch size and must find the
    record's outputs and executed costs: float32's outputs and a static plan's per-item costs do not
    move with the batch, but a per-token FFN rule's (AdaSkip) cost counts its batch's rows, so such a
    record must share that batch size (checked once the model's layers are known, before any batch)."""
    batch = entries[0][2].batch_size
    for path, _, args, method in entries[1:]:
        plan = method.plan(facts)
        if args.batch_size != batch and any(stage.dynamic_ffn for stage in plan.stages.values()):
            raise UserError(f"{path} ran at batch {args.batch_size}, its group at batch {batch} (its first record's), "
                            f"and {method.name}'s executed costs depend on its batch's rows",
                            f"re-run it with --batch-size {batch}, or time it in a group whose first record ran at "
                            f"{args.batch_size}")


def retime_together(entries: list[tuple], timed: int | None, rounds: int, out_dir: Path, command: str) -> list[Path]:
    """Time the records of `entries` (path, record, its `run` args, its method) together; write the copies."""
    check_group(entries, out_dir)
    _, rec, args, _ = entries[0]
    names = [Path(path).stem for path, _, _, _ in entries]
    outs = {name: out_dir / Path(path).name for name, (path, _, _, _) in zip(names, entries)}
    session = Session.open(args.model, dtype=args.dtype, device=args.device, numerics=args.numerics)
    check_batch_sizes(entries, model_facts(session.executor, session.loaded.name))
    checkpoint = out_dir / f"{Path(entries[0][0]).name}.together.partial.jsonl"
    records = time_together(
        session, args.bench, [(name, method, path) for name, (path, _, _, method) in zip(names, entries)],
        split=args.split, limit=args.limit, config=ReasonerConfig(**rec.config), data_dir=args.data_dir,
        seed=args.seed, timed=timed, rounds=rounds, batch_size=args.batch_size, dense_record=args.dense_record,
        checkpoint_path=str(checkpoint),
        commands={name: own_command(r.command, path, outs[name], timed, rounds)
                  for name, (path, r, _, _) in zip(names, entries)})
    for name, record in records.items():
        record.extra["timing_command"] = command
        write_record(outs[name], record)
        ci = "" if not record.speedup_ci95 else " [{:.2f}, {:.2f}]".format(*record.speedup_ci95)
        speed = "no speedup" if record.speedup is None else f"speedup {record.speedup:.2f}x{ci}"
        log(f"[{name}] batch 1: {speed} -> {outs[name]}")
    checkpoint.unlink(missing_ok=True)  # every record holds its timing now
    return list(outs.values())
