"""Records answered by another rule, on the same generations (no model run).

    python -m litestage_bench.studies.rescore RECORD.json ... --answer-rule RULE [--dense-record D.json] --out-dir DIR

Every item keeps every rule's prediction (`predictions_by_rule`), so a rule chosen later (on
calibration items: `studies.answer_rule`) re-scores a record exactly: each item's answer, the
accuracy and its CI, the answer-rule counts and, for a method's record, its comparison with dense
(agreement, flips, answer KL, McNemar, retention), against dense's record re-scored by the same rule
(`--dense-record`, required for a method's record). Timing, speedups and the rest are kept as they
are; the noise floor is the one measured today for the model and numerics. Writes DIR/NAME.json with
`extra.rescored` = {from_rule, command}; the record's own command is kept (it made the generations).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..core.errors import UserError
from ..records.fidelity import answered_by, check_rule
from ..records.noise import noise_floor_for
from ..records.results import ResultRecord, build_record, emit_markdown, load_record, write_record

KEPT = ("speedup", "speedup_ci95", "speedup_decomposition", "timing", "speculative", "machine", "created",
        "latency_s", "stage_latency_s", "tokens", "executed_cost_fraction")


def rescored(rec: ResultRecord, rule: str, dense: ResultRecord | None, command: str) -> ResultRecord:
    """`rec` answered by `rule`; a method's record compared with `dense` answered by it too."""
    check_rule(rule)
    if rec.method != "dense" and dense is None:
        raise UserError(f"{rec.method}'s record needs dense's to be compared again", "pass --dense-record D.json")
    dense_items = None if rec.method == "dense" else [answered_by(d, rule) for d in dense.items]
    built = build_record(model=rec.model, benchmark=rec.benchmark, split=rec.split, method=rec.method,
                         policy=rec.policy, answer_rule=rule, items=[answered_by(it, rule) for it in rec.items],
                         command=rec.command, config={**rec.config, "answer_rule": rule},
                         extra={**rec.extra, "rescored": {"from_rule": rec.answer_rule, "command": command}},
                         dense_items=dense_items, chance=rec.chance, speedup=rec.speedup,
                         # today's floor of the model and numerics: one measured since the record was made counts
                         noise_floor=noise_floor_for(rec.model, rec.numerics or rec.dtype, rec.device or "cpu"),
                         dtype=rec.dtype, threads=rec.threads, device=rec.device, numerics=rec.numerics)
    return dataclasses.replace(built, **{k: getattr(rec, k) for k in KEPT})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litestage_bench.studies.rescore", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", nargs="+", help="`run` records")
    ap.add_argument("--answer-rule", required=True, help="regex, letter, cloze, regex+letter, regex+cloze")
    ap.add_argument("--dense-record", help="dense's record on the same items (for a method's record)")
    ap.add_argument("--out-dir", required=True, help="where the re-scored copies go (same file names)")
    args = ap.parse_args(argv)
    command = "python -m litestage_bench.studies.rescore " + " ".join(sys.argv[1:] if argv is None else argv)

    def run() -> str:
        dense = load_record(args.dense_record) if args.dense_record else None
        old = {Path(p): load_record(p) for p in args.records}
        new = {p: rescored(rec, args.answer_rule, dense, command) for p, rec in old.items()}
        out = Path(args.out_dir)
        if any(p.resolve().parent == out.resolve() for p in new):
            raise UserError(f"--out-dir {out} holds the records themselves", "write the copies to another folder")
        out.mkdir(parents=True, exist_ok=True)
        lines = []
        for path, rec in new.items():  # every record checked before the first is written
            write_record(out / path.name, rec)
            lines.append(f"{out / path.name}: {args.answer_rule} accuracy {rec.accuracy:.3f} "
                         f"(was {old[path].accuracy:.3f} by {old[path].answer_rule})")
        return "\n".join(lines)
    return emit_markdown(run, None)


if __name__ == "__main__":
    raise SystemExit(main())
