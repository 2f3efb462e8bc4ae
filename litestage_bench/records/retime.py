"""The command that re-times a record made before interleaved timing: its own `run` command with
`--answers-from` itself (answers read back, only the timed items run). Prints nothing for a record
already timed in rounds.

    python -m litestage_bench.records.retime RECORD.json
"""
from __future__ import annotations

import shlex
import sys

from ..core.errors import UserError, print_error
from .results import load_record


def retime_command(path: str) -> str | None:
    rec = load_record(path)
    if rec.timing.get("rounds"):
        return None
    args = shlex.split(rec.command)
    if args[:2] != ["litestage-bench", "run"] or "--out" not in args:
        raise UserError(f"{path} was not made by `litestage-bench run ... --out`", "re-time it by re-running its command")
    args[args.index("--out") + 1] = path  # in place, wherever the record was first written
    return shlex.join([*args, "--answers-from", path])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m litestage_bench.records.retime RECORD.json", file=sys.stderr)
        return 2
    try:
        cmd = retime_command(argv[0])
    except UserError as exc:
        print_error(exc)
        return 2
    if cmd:
        print(cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
