"""The LiteStage paper's three claims, each put to its test on one model and benchmark.

    python -m litestage_bench.studies.claims --dense D.json --litestage L.json --no-exit N.json \
        --uniform U.json --out results/headline/claims_MODEL_BENCH.md

Records: dense's, LiteStage's (its accuracy-target policy, with early exit), the same search without
early exit (`--no-early-exit`) and with a uniform budget (`--uniform`), all on the same items. The
tests (95%, on the same items):
1. "up to 1.70x at < 4 points loss": LiteStage's accuracy against dense's, paired: the one-sided
   lower bound of the difference above -4 points (non-inferiority), and its speedup's 95% CI at or
   above 1.70x. Holds when both are shown; fails when the loss is shown (the difference's upper bound
   below -4 points) or the speedup's CI lies below 1.70x; else undecided.
2. "stage-wise beats uniform": the speedup ratio stage-wise / uniform (paired t or z test, as the headline's) and
   the accuracy difference (exact McNemar). Holds when stage-wise is faster (p < 0.05) and not less
   accurate (McNemar p >= 0.05 or more accurate), or more accurate and not slower; fails when uniform
   is so; else undecided.
3. "early exit removes redundant tokens": tokens per item with the exit against without it (Wilcoxon
   signed-rank on the paired per-item totals) and the accuracy difference (one-sided lower bound above
   -4 points). Holds when fewer tokens and no loss beyond 4 points are shown; fails when the loss is
   shown or the exit generates no fewer tokens in all; else undecided.
A claim without its records says so.
"""
from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from ..core.errors import UserError
from ..records import stats
from ..records.report import fmt_p, speedup_ci_cell
from ..records.results import ResultRecord, emit_markdown, load_record
from .headline import _paired, speed_ratio_test

CLAIMED_SPEEDUP = 1.70
TOLERANCE = 0.04  # 4 points
ALPHA = 0.05
COLUMNS = ["claim", "evidence", "test", "verdict"]


def _noninferior(a: list[bool], b: list[bool]) -> tuple[str, str, str]:
    """(a - b cell, its one-sided bounds, "shown" / "loss" / "undecided" at -TOLERANCE)."""
    gained = sum(x and not y for x, y in zip(a, b))
    lost = sum(y and not x for x, y in zip(a, b))
    est, lo, hi = stats.paired_difference_bounds(gained, lost, len(a), 1 - ALPHA)
    state = "shown" if lo > -TOLERANCE else ("loss" if hi < -TOLERANCE else "undecided")
    return f"{est:+.3f} (+{gained}/-{lost}, n {len(a)})", f"one-sided 95% bounds [{lo:+.3f}, {hi:+.3f}]", state


def speedup_claim(lite: ResultRecord, dense: ResultRecord) -> list[str]:
    mine, theirs, _ = _paired(lite, dense)
    diff, bounds, state = _noninferior(mine, theirs)
    lo, hi = lite.speedup_ci95 or (None, None)
    fast = "undecided" if lo is None else ("shown" if lo >= CLAIMED_SPEEDUP else
                                         "below" if hi < CLAIMED_SPEEDUP else "undecided")
    verdict = ("holds" if state == "shown" and fast == "shown" else "fails (accuracy lost)" if state == "loss" else
               "fails (below 1.70x)" if fast == "below" else "undecided")
    return ["up to 1.70x at < 4 points loss", f"speedup {speedup_ci_cell(lite)}; accuracy vs dense {diff}",
            f"accuracy: {bounds} against -{TOLERANCE:.2f}; speedup CI against {CLAIMED_SPEEDUP:.2f}x", verdict]


def _better(ratio: float, p: float | None, acc_d: float, acc_p: float) -> str:
    """"a" or "b" where one side is faster and not less accurate, or more accurate and not slower."""
    faster = None if p is None or p >= ALPHA else ("a" if ratio > 1 else "b")
    accurate = None if acc_p >= ALPHA else ("a" if acc_d > 0 else "b")
    for side in ("a", "b"):
        if (faster == side and accurate in (None, side)) or (accurate == side and faster in (None, side)):
            return side
    return ""


def stagewise_claim(lite: ResultRecord, uniform: ResultRecord) -> list[str]:
    ratio, p, test = speed_ratio_test(lite, uniform)
    mine, theirs, _ = _paired(lite, uniform)
    d = (sum(mine) - sum(theirs)) / len(mine)
    acc_p = stats.mcnemar_exact_p(mine, theirs)
    side = _better(ratio, p, d, acc_p)
    return ["stage-wise beats uniform", f"speedup {speedup_ci_cell(lite)} vs {speedup_ci_cell(uniform)}; "
            f"accuracy {sum(mine) / len(mine):.3f} vs {sum(theirs) / len(theirs):.3f}",
            f"speed ratio {ratio:.2f}x ({test} test p {fmt_p(p)}); McNemar p {fmt_p(acc_p)}",
            {"a": "holds", "b": "fails (uniform is better)"}.get(side, "undecided")]


def exit_claim(lite: ResultRecord, no_exit: ResultRecord) -> list[str]:
    from scipy.stats import wilcoxon

    theirs = {it.id: it for it in no_exit.items}
    pairs = [(it, theirs[it.id]) for it in lite.items if it.id in theirs]
    if not pairs:
        raise UserError("the LiteStage and no-exit records share no item", "run both on the same items")
    with_exit = [sum(a.tokens.values()) for a, _ in pairs]
    without = [sum(b.tokens.values()) for _, b in pairs]
    p = 1.0 if with_exit == without else float(wilcoxon(with_exit, without, alternative="less").pvalue)
    diff, bounds, state = _noninferior([a.correct for a, _ in pairs], [b.correct for _, b in pairs])
    fewer = sum(without) / max(sum(with_exit), 1)
    verdict = ("holds" if p < ALPHA and state == "shown" else
               "fails (accuracy lost)" if state == "loss" else
               "fails (tokens not fewer)" if sum(with_exit) >= sum(without) else "undecided")
    return ["early exit removes redundant tokens", f"{fewer:.2f}x fewer tokens per item "
            f"({sum(without) / len(pairs):.1f} -> {sum(with_exit) / len(pairs):.1f}); accuracy vs no exit {diff}",
            f"tokens: Wilcoxon signed-rank p {fmt_p(p)}; accuracy: {bounds} against -{TOLERANCE:.2f}", verdict]


def claims_markdown(dense: ResultRecord, lite: ResultRecord, no_exit: ResultRecord | None,
                    uniform: ResultRecord | None, command: str) -> str:
    rows = [speedup_claim(lite, dense),
            stagewise_claim(lite, uniform) if uniform else ["stage-wise beats uniform", "no uniform record", "-", "-"],
            exit_claim(lite, no_exit) if no_exit else ["early exit removes redundant tokens", "no no-exit record",
                                                       "-", "-"]]
    table = tabulate(rows, headers=COLUMNS, tablefmt="github", disable_numparse=True)
    return (f"# The paper's claims on {lite.model} / {lite.benchmark}\n\nRendered with `{command}`.\n\n"
            f"LiteStage: `{lite.command}`.\n\n{table}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litestage_bench.studies.claims", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense", required=True, help="dense's record on the same items")
    ap.add_argument("--litestage", required=True, help="LiteStage's record (accuracy target, early exit on)")
    ap.add_argument("--no-exit", help="the same policy's record without early exit")
    ap.add_argument("--uniform", help="the uniform-budget search's record")
    ap.add_argument("--out", help="also write the markdown here")
    args = ap.parse_args(argv)
    command = "python -m litestage_bench.studies.claims " + " ".join(sys.argv[1:] if argv is None else argv)

    def render() -> str:
        return claims_markdown(load_record(args.dense), load_record(args.litestage),
                               load_record(args.no_exit) if args.no_exit else None,
                               load_record(args.uniform) if args.uniform else None, command)
    return emit_markdown(render, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
