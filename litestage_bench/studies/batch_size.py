"""The accuracy runs' batch size: CPU seconds per item at several batch sizes, interleaved, and
whether the answers change with it.

    python -m litestage_bench.studies.batch_size --model M [--numerics float32] [--bench obqa] \\
        [--items 16] [--batch-sizes 8,16] [--rounds 1] [--out FILE.md]

Dense solves the same evaluation items at each batch size, the sizes' order alternating by round
(one warm-up batch first, not counted). Per size: process CPU seconds and wall seconds per item,
the CPU ratio to the first size, and the items whose answer or any stage's output differs from the
first size's. The item count must be a multiple of every size, so that each runs full batches.
Why: on one CPU thread a decode step of a small batch reads every weight for few rows, so a bigger
batch can cost less per item; where the numerics are exact (float32 on a CPU) the answers must not
move, and this checks that they do not before a campaign changes its `--batch-size`.
CPU cost: about rounds x sizes x items x the model's seconds per item.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from tabulate import tabulate

from ..core.errors import UserError
from ..engine.plan import DENSE
from ..evaluation.runner import evaluate_items
from ..records.results import emit_markdown, machine_info


def check_sizes(sizes: list[int], n_items: int) -> None:
    if not sizes or any(b < 1 for b in sizes):
        raise UserError("--batch-sizes must be positive integers", "e.g. --batch-sizes 8,16")
    if any(n_items % b for b in sizes):
        raise UserError(f"{n_items} items do not split into full batches of {sizes}",
                        "use an item count that every batch size divides, e.g. --items 16 for 8,16")


def measure(reasoner: Any, items: list, sizes: list[int], rounds: int, log=lambda m: None) -> list[dict]:
    """Per batch size: CPU and wall seconds over every round, and the items whose answer or outputs
    differ from the first size's (each size's first round)."""
    check_sizes(sizes, len(items))
    reasoner.solve_batch(items[:min(2, len(items))], DENSE)  # warm-up: allocator, header cache
    seconds = {b: [0.0, 0.0] for b in sizes}
    solved: dict[int, list] = {}
    for r in range(rounds):
        for b in (sizes if r % 2 == 0 else sizes[::-1]):
            wall, cpu = time.perf_counter(), time.process_time()
            results = evaluate_items(reasoner, DENSE, {}, items, b, progress=False)
            seconds[b][0] += time.process_time() - cpu
            seconds[b][1] += time.perf_counter() - wall
            solved.setdefault(b, results)
            log(f"[batch_size] round {r + 1}/{rounds} batch {b}: {seconds[b][0] / (len(items) * (r + 1)):.2f} CPU s/item")
    first = {res.id: res for res in solved[sizes[0]]}
    rows = []
    for b in sizes:
        n = len(items) * rounds
        rows.append({"batch_size": b, "items": len(items), "rounds": rounds,
                     "cpu_s_per_item": seconds[b][0] / n, "wall_s_per_item": seconds[b][1] / n,
                     "answers_changed": sorted(res.id for res in solved[b] if res.prediction != first[res.id].prediction),
                     "outputs_changed": sorted(res.id for res in solved[b] if res.outputs != first[res.id].outputs)})
    for row in rows:
        row["cpu_ratio"] = row["cpu_s_per_item"] / rows[0]["cpu_s_per_item"]
    return rows


def render(rows: list[dict], model: str, numerics: str, bench: str, command: str) -> str:
    machine = machine_info()
    body = [[r["batch_size"], r["items"], r["rounds"], f"{r['cpu_s_per_item']:.2f}", f"{r['wall_s_per_item']:.2f}",
             f"{r['cpu_ratio']:.3f}", len(r["answers_changed"]), len(r["outputs_changed"])] for r in rows]
    table = tabulate(body, headers=["batch size", "items", "rounds", "CPU s per item", "wall s per item",
                                    f"CPU / batch {rows[0]['batch_size']}", "answers changed", "outputs changed"],
                     tablefmt="github")
    return (f"# Accuracy runs by batch size: {model} ({numerics}), {bench}\n\nRendered with `{command}` on "
            f"{machine.get('cpu')} ({machine.get('torch_threads')} thread(s), torch "
            f"{machine.get('torch')}). Dense, the same items at each size, the order alternating by round; "
            f"changes against batch {rows[0]['batch_size']}'s run.\n\n{table}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litestage_bench.studies.batch_size", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--numerics", default="float32")
    ap.add_argument("--bench", default="obqa")
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--batch-sizes", default="8,16")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", help="also write the table here (markdown)")
    args = ap.parse_args(argv)
    command = "python -m litestage_bench.studies.batch_size " + " ".join(sys.argv[1:] if argv is None else argv)

    def rendered() -> str:
        from ..engine.models import check_numerics
        from ..evaluation.benchmarks import load_split
        from ..evaluation.runner import Session, default_config, log

        try:
            sizes = [int(b) for b in args.batch_sizes.split(",") if b]
        except ValueError:
            raise UserError(f"--batch-sizes {args.batch_sizes!r} is not a list of integers", "e.g. --batch-sizes 8,16")
        if args.items < 1 or args.rounds < 1:
            raise UserError("--items and --rounds must be >= 1", "e.g. --items 16 --rounds 1")
        check_sizes(sizes, args.items)  # before the model loads
        check_numerics(args.model, None, args.numerics)
        session = Session.open(args.model, numerics=args.numerics)
        reasoner = session.reasoner(args.bench, default_config(session.loaded))
        items = load_split(args.bench, "eval", limit=args.items)
        rows = measure(reasoner, items, sizes, args.rounds, log)
        return render(rows, args.model, args.numerics, args.bench, command)

    return emit_markdown(rendered, args.out)


if __name__ == "__main__":
    sys.exit(main())
