"""Re-judge the candidates of committed LiteStage policies with the search's current decision rule
(`litestage.decide`: one-sided bounds, paired against dense), without running anything: each
candidate row already holds its answer flips and agreement on the calibration items, and each row
is judged at the confidences its test recorded (`test.confidence`, `test.meets_confidence`: an
interim look's or the last look's spent one), `--confidence` where it recorded none.

    python -m litestage_bench.studies.policy_audit results/policies/*litestage*.json --out results/litestage/policy_audit.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tabulate import tabulate

from ..core.errors import UserError
from ..methods.litestage import decide
from ..records.results import emit_markdown

COLUMNS = ["policy", "target", "calibration n", "chosen: estimate [one-sided bounds]", "chosen: decision now",
           "candidates meeting the point rule", "meets", "undecided", "clearly misses"]


def _target(policy: dict) -> dict:
    t = policy["target"]
    return {"kind": t["kind"], "tolerance_points": t.get("tolerance_points"), "min_agreement": t.get("min_agreement"),
            "min_accuracy": t.get("min_accuracy")}


def _point_rule(target: dict, row: dict) -> bool:
    """The earlier rule: the point estimate alone at or above the bar."""
    if target["kind"] == "accuracy":
        return row["accuracy"] >= target["min_accuracy"] - 1e-9
    return row["agreement"] >= target["min_agreement"] - 1e-9


def _confidences(row: dict, confidence: float) -> tuple[float, float | None]:
    """The confidences a row's test was decided at (an interim look's futility and efficacy ones, or the
    last look's spent one), as recorded; `confidence` for rows that recorded none."""
    test = row.get("test") or {}
    return test.get("confidence") or confidence, test.get("meets_confidence")


def audit_row(path: str, confidence: float) -> list[str]:
    try:
        policy = json.loads(Path(path).read_text(encoding="utf-8"))
        target, n = _target(policy), policy["calibration"]["n"]
        # early policies kept no n per row (every candidate saw every item); a stopped candidate has its own
        rows = [{**r, "flips": {"n": n, **r["flips"]}} for r in [policy["chosen"], *policy["candidates"][1:]]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not a LiteStage policy with candidates ({err!r})",
                        "pass files written by `litestage-bench search --method litestage`") from None
    chosen, *candidates = [decide(target, r, *_confidences(r, confidence)) for r in rows]
    decisions = [d["decision"] for d in candidates]
    return [Path(path).stem, target["kind"], str(n),
            f"{chosen['estimate']:+.3f} [{chosen['lower']:+.3f}, {chosen['upper']:+.3f}]", chosen["decision"],
            f"{sum(_point_rule(target, r) for r in rows[1:])} of {len(candidates)}",
            *(str(decisions.count(k)) for k in ("meets", "undecided", "clearly misses"))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litestage_bench.studies.policy_audit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policies", nargs="+")
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--out", help="also write the markdown table here")
    args = ap.parse_args(argv)
    command = "python -m litestage_bench.studies.policy_audit " + " ".join(sys.argv[1:] if argv is None else argv)

    def render() -> str:
        table = tabulate([audit_row(p, args.confidence) for p in args.policies], headers=COLUMNS,
                         tablefmt="github", disable_numparse=True)
        return (f"# LiteStage policies under the confidence rule\n\nRendered with `{command}`.\n\n"
                f"Accuracy target: the paired difference (candidate - dense); agreement target: the agreement; "
                f"bounds one-sided at {args.confidence:g}.\n\n{table}\n")

    return emit_markdown(render, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
