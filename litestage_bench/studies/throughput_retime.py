"""Throughput at batch B for committed records, their answers checked, their latency kept
(`litestage-bench retime-throughput RECORD.json ... --timing batch=8 --out-dir results/throughput`,
which parses each record's own `litestage-bench run` command and builds its method).

The record's stored reasoner settings are used as they are. Seeded chunks of B of its items are
solved by dense and the method as one batch each, interleaved (`--chunks`, `--chunk-rounds`;
docs/measuring.md, "Throughput at batch B"), and every chunk's answers must equal the record's
(exact numerics), or the record is refused. Writes OUT_DIR/NAME.json: the record with
`timing.throughput` added and the command in `extra.throughput_command`; nothing else changes.
Records with the same model share one load. CPU cost per record: about chunks x B items x 2 sides x
(rounds + 1 warm-up chunk) at batched speed.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import UserError
from ..engine.method import model_facts
from ..engine.plan import DENSE
from ..evaluation.benchmarks import check_items, load_split
from ..evaluation.reasoner import ReasonerConfig
from ..evaluation.runner import Session, check_chunks, checked_plan, log, method_callbacks, throughput_timing
from ..records.results import write_json


def retime(path: str, rec, args, method, settings: tuple[int, int, int], out_dir: Path, sessions: dict,
           command: str) -> Path:
    """Add `timing.throughput` at `settings` = (B, chunks, rounds) to the record at `path` (`rec`, made by
    the `run` command `args` whose method is `method`), written to out_dir."""
    if rec.method == "dense":
        raise UserError(f"{path} is dense's own record: there is nothing to compare", "give a method's record")
    items = check_items(load_split(args.bench, args.split, limit=args.limit, data_dir=args.data_dir, seed=args.seed),
                        args.bench, args.split, args.data_dir)
    if [q.id for q in items] != [it.id for it in rec.items]:
        raise UserError(f"{path}: its command selects other items than the record holds", "re-run the record")
    check_chunks(settings, len(items))
    key = (args.model, rec.numerics)
    if key not in sessions:
        sessions.clear()  # one model in memory at a time
        sessions[key] = Session.open(args.model, dtype=args.dtype, device=args.device, numerics=args.numerics)
    session = sessions[key]
    reasoner = session.reasoner(args.bench, ReasonerConfig(**rec.config), args.data_dir)
    facts = model_facts(session.executor, session.loaded.name)
    pipelines = {"method": (checked_plan(method, facts), method_callbacks(method)), "dense": (DENSE, {})}
    if json.loads(json.dumps(method.describe())) != rec.policy:  # as planned for the model (layers chosen)
        raise UserError(f"{path}: its command's method and policy are not the record's", "re-run the record")
    label = f"{rec.model} {rec.benchmark} {rec.method}"
    throughput = throughput_timing(reasoner, pipelines, items, rec.items, settings, args.seed, label)
    data = json.loads(Path(path).read_text())
    data["timing"]["throughput"] = throughput
    data.setdefault("extra", {})["throughput_command"] = command
    out = out_dir / Path(path).name
    write_json(out, data)
    t = throughput
    log(f"[{label}] batch {settings[0]}: {t['throughput_speedup']:.2f}x {t['throughput_speedup_ci95']} -> {out}")
    return out
