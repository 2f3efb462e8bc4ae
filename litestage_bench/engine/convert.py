"""Convert embedded models into the model cache once (GGUF -> float32 safetensors), as the set-up
does (`bash run.sh setup`), so that no run pays for it inside its first case:

    python -m litestage_bench.engine.convert ALIAS...

Prints a line per model it converted (nothing for one already converted); exit 2 on an unknown alias.
"""
from __future__ import annotations

import argparse
import sys
import time

from ..core.errors import UserError, print_error
from .models import MODELS, ensure_converted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m litestage_bench.engine.convert",
                                     description="Convert embedded models into the model cache once.")
    parser.add_argument("aliases", nargs="+", metavar="ALIAS", help=f"one of {', '.join(MODELS)}")
    aliases = parser.parse_args(sys.argv[1:] if argv is None else argv).aliases
    try:
        for alias in aliases:
            if alias not in MODELS:
                raise UserError(f"unknown model '{alias}'", f"pick one of {', '.join(MODELS)}")
        for alias in aliases:
            start = time.perf_counter()
            target, converted = ensure_converted(MODELS[alias])
            if converted:
                print(f"[convert] {alias} -> {target} ({time.perf_counter() - start:.0f} s, once per machine)",
                      file=sys.stderr)
    except UserError as exc:
        print_error(exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
