"""Throughput at batch B for committed records, their answers checked, their latency kept
(`litestage-bench retime-throughput RECORD.json ... --timing batch=8 --out-dir results/throughput`,
which parses each record's own `litestage-bench run` command and builds its method).

The record's stored reasoner settings are used as they are. Seeded chunks of B of its items are
solved by dense and the method as one batch each, interleaved (`--chunks`, `--chunk-rounds`;
docs/measuring.md, "Throughput at batch B"), and every chunk's answers must equal the record's
(exact numerics), or the record is refused. Writes OUT_DIR/NAME.json: the record with
`timing.throughput` added and the command in `extra.throughput_command`; nothing else changes.
Records with the same model share one load. CPU cost per record: about chunks x B items x 2 sides x
(rounds + 1 warm-up chunk) at batched speed. With `--group K`, up to K consecutive records of the
same model, benchmark, items and reasoner settings are timed in the same chunk rounds against one
dense (each copy names the others in `timing.throughput.timed_with`): k records cost k + 1 solves
per chunk round instead of 2k. Each finished chunk is kept in OUT_DIR/NAME.json.partial.jsonl (NAME:
the group's first record) until the copies are written: the same command continues after the chunks
that finished, on a machine of the same CPU label (another CPU times them again).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..core.errors import UserError
from ..engine.method import model_facts
from ..engine.models import weights_id
from ..engine.plan import DENSE
from ..evaluation.benchmarks import check_items, load_split
from ..evaluation.checkpoint import RunCheckpoint
from ..evaluation.reasoner import ReasonerConfig
from ..evaluation.runner import (Session, check_chunks, checked_plan, clock_label, group_throughput_timing, log,
                                 method_callbacks)
from ..records.results import write_json


def _checked_items(group: list[tuple], settings: tuple[int, int, int]) -> list:
    """The group's items (one `group_key`: one load), after the checks that need no model: no dense
    record, each command's items are its record's, enough items for the chunks."""
    _, _, args, _ = group[0]
    items = check_items(load_split(args.bench, args.split, limit=args.limit, data_dir=args.data_dir, seed=args.seed),
                        args.bench, args.split, args.data_dir)
    for path, rec, _, _ in group:
        if rec.method == "dense":
            raise UserError(f"{path} is dense's own record: there is nothing to compare", "give a method's record")
        if [q.id for q in items] != [it.id for it in rec.items]:
            raise UserError(f"{path}: its command selects other items than the record holds", "re-run the record")
    check_chunks(settings, len(items))
    return items


def group_key(rec, args) -> tuple:
    """Records with the same key can share dense's chunk rounds: one model, numerics, benchmark, items
    and reasoner settings."""
    return (args.model, args.dtype, args.device, rec.numerics, args.bench, args.split, args.limit, args.seed,
            str(args.data_dir), json.dumps(rec.config, sort_keys=True))


def groups_of(entries: list[tuple], size: int) -> list[list[tuple]]:
    """Consecutive entries (path, rec, args, method) with the same `group_key`, at most `size` each."""
    out: list[list[tuple]] = []
    for entry in entries:
        if out and len(out[-1]) < size and group_key(*out[-1][0][1:3]) == group_key(*entry[1:3]):
            out[-1].append(entry)
        else:
            out.append([entry])
    return out


def retime(group: list[tuple], settings: tuple[int, int, int], out_dir: Path, sessions: dict,
           command: str) -> list[Path]:
    """Add `timing.throughput` at `settings` = (B, chunks, rounds) to each record of `group` (entries
    (path, record, the `run` command's args, its method), one `group_key`), timed in the same chunk
    rounds against one dense; the copies are written to out_dir."""
    items = _checked_items(group, settings)
    _, rec, args, _ = group[0]
    key = (args.model, rec.numerics)
    if key not in sessions:
        sessions.clear()  # one model in memory at a time
        sessions[key] = Session.open(args.model, dtype=args.dtype, device=args.device, numerics=args.numerics)
    session = sessions[key]
    reasoner = session.reasoner(args.bench, ReasonerConfig(**rec.config), args.data_dir)
    facts = model_facts(session.executor, session.loaded.name)
    methods, results = {}, {}  # by the record's file name (the command refuses two alike)
    for path, rec_i, _, method in group:
        name = Path(path).stem
        methods[name] = (checked_plan(method, facts), method_callbacks(method))
        if json.loads(json.dumps(method.describe())) != rec_i.policy:  # as planned for the model (layers chosen)
            raise UserError(f"{path}: its command's method and policy are not the record's", "re-run the record")
        results[name] = rec_i.items
    label = f"{rec.model} {rec.benchmark} " + " + ".join(r.method for _, r, _, _ in group)
    checkpoint = _checkpoint(group, settings, out_dir, session, args.seed, label)
    timed = group_throughput_timing(reasoner, (DENSE, {}), methods, items, results, settings, args.seed, label,
                                    checkpoint, clock_label(session))
    written = []
    for path, _, _, _ in group:
        name = Path(path).stem
        throughput = timed[name]
        if len(group) > 1:
            throughput["timed_with"] = [Path(p).name for p, _, _, _ in group if p != path]
        data = json.loads(Path(path).read_text())
        data["timing"]["throughput"] = throughput
        data.setdefault("extra", {})["throughput_command"] = command
        out = out_dir / Path(path).name
        write_json(out, data)
        written.append(out)
        t = throughput
        log(f"[{name}] batch {settings[0]}: {t['throughput_speedup']:.2f}x {t['throughput_speedup_ci95']} -> {out}")
    checkpoint.remove()
    return written


def _checkpoint(group: list[tuple], settings: tuple[int, int, int], out_dir: Path, session: Session, seed: int,
                label: str) -> RunCheckpoint:
    """The group's chunk checkpoint, fingerprinted by the records (names and contents), the weights and
    the settings: a group of other records or settings starts afresh."""
    records = [(Path(path).name, hashlib.sha256(Path(path).read_bytes()).hexdigest()[:20]) for path, _, _, _ in group]
    loaded = session.loaded
    path = out_dir / f"{Path(group[0][0]).name}.partial.jsonl"
    checkpoint = RunCheckpoint(path, {"records": records, "settings": list(settings), "seed": seed,
                                      "weights": weights_id(loaded), "numerics": loaded.numerics,
                                      "device": str(session.executor.device)})
    if checkpoint.resumed:
        log(f"[{label}] resuming: {checkpoint.resumed} finished chunks in {path}")
    elif checkpoint.replaced:
        log(f"[{label}] removed {path}: the checkpoint of another group (other records or settings)")
    return checkpoint
