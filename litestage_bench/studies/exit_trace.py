"""Are the search's derived early-exit runs the real ones? A measurement on a real model.

    python -m litestage_bench.studies.exit_trace POLICY.json --stage recall analyze --items 24 --out FILE.md

An exit rule only ends a row's generation: at the first step whose full window of confidences has a
mean at or below the threshold, the row stops (the executor drops that step's token) unless the
token already ends it. So, if every row's tokens and confidences do not depend on when the other
rows of its batch stop (rows leave the batch in bulk, which changes the batch's shape), the stage
output under any threshold is a prefix of the exit-off output, found from the exit-off run's
per-row confidence trace, and a threshold sweep needs one generation of the swept stage instead
of one per threshold. The search relies on it where the numerics are exact (StageMemo's
`exit_trace`, evaluation/reasoner.py).

This study runs the policy's skip plan (its `stages`) on the first N calibration items of its
search as the search does: once exit-off through a memo that keeps the swept stage's trace and
through one that does not (as the search ran before), then, per threshold of the policy's
`exit_thresholds_swept`, through the first with that stage derived and through the second, which
computes it (and reuses the earlier stages, as the search did: a memo's runs equal runs without it,
tests/test_litestage.py). It reports per threshold the items compared, the items whose stage ended
sooner than exit-off, the items whose derived result differs from the computed one in any of: the
stage's output, tokens per stage, every rule's answer, the executed cost per stage (to 1e-9,
relative), and the CPU seconds of each (process time, one thread): what a threshold of the sweep
costs the search now and what it cost before.
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch
from tabulate import tabulate

from ..core.errors import UserError
from ..engine.early_exit import ConfidenceExit, ExitRule
from ..engine.plan import STAGES, SkipSet
from ..evaluation.reasoner import ReasonerConfig, StageMemo
from ..evaluation.runner import Session, evaluate_items
from ..methods.litestage import calibration_items, plan_from_sets
from ..methods.registry import load_policy
from ..records.results import emit_markdown, machine_info


def measure(policy_path: str, stage: str, n_items: int, batch_size: int) -> list[list]:
    policy = load_policy(policy_path)
    if policy.get("method") != "litestage":
        raise UserError(f"{policy_path} is not a LiteStage policy", "give a policy written by `search --method litestage`")
    if stage == "summarize":
        raise UserError("the summarize stage is not derived", "pick recall or analyze")
    thresholds = (policy.get("exit_thresholds_swept") or {}).get(stage) or []
    if not thresholds:
        raise UserError(f"{policy_path} swept no early-exit threshold for {stage}", "pick a stage it swept")
    opts = policy["options"]
    session = Session.open(policy["model"], numerics=policy.get("numerics"))
    config = ReasonerConfig(**policy["reasoner_config"])  # the search's own settings
    items, _ = calibration_items(policy["bench"], opts["limit"], opts["timed"], opts["seed"])
    items = items[:n_items]
    reasoner = session.reasoner(policy["bench"], config)
    plan = plan_from_sets({s: SkipSet.from_dict(policy["stages"][s]["skip"]) for s in STAGES})
    # the search now (derived) and as it computed these runs before: a memo without exit_trace
    memo, before = StageMemo(exit_trace=(opts["exit_window"], opts["exit_confidence"])), StageMemo()
    off = evaluate_items(reasoner, plan, {}, items, batch_size, progress=False, memo=memo)
    evaluate_items(reasoner, plan, {}, items, batch_size, progress=False, memo=before)
    table = []
    for threshold in sorted(thresholds, reverse=True):
        callbacks = {stage: ConfidenceExit(ExitRule(opts["exit_window"], threshold, opts["exit_confidence"]))}
        derived_before = memo.derived
        with memo.deriving(stage):
            derived, derived_s = _timed(lambda: evaluate_items(reasoner, plan, callbacks, items, batch_size,
                                                               progress=False, memo=memo))
        if memo.derived == derived_before:
            raise UserError(f"no {stage} run was derived", "the plan or numerics do not allow it (StageMemo)")
        real, real_s = _timed(lambda: evaluate_items(reasoner, plan, callbacks, items, batch_size, progress=False,
                                                     memo=before))
        sooner = sum(d.tokens[stage] < o.tokens[stage] for d, o in zip(derived, off))
        differ = sum(not _same(d, r, stage) for d, r in zip(derived, real))
        table.append([stage, f"{threshold:.4g}", len(items), sooner, differ, f"{derived_s:.1f}", f"{real_s:.1f}",
                      f"{derived_s / real_s:.2f}"])
    return table


def _timed(run):
    start = time.process_time()
    out = run()
    return out, time.process_time() - start


def _same(derived, real, stage: str) -> bool:
    costs = derived.executed_cost_fraction, real.executed_cost_fraction
    return (derived.outputs[stage] == real.outputs[stage] and derived.tokens == real.tokens
            and derived.predictions_by_rule == real.predictions_by_rule
            and all(math.isclose(costs[0][s], costs[1][s], rel_tol=1e-9) for s in STAGES))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litestage_bench.studies.exit_trace", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy", help="a LiteStage policy (its plan, thresholds and calibration items)")
    ap.add_argument("--stage", nargs="+", choices=("recall", "analyze"), default=["analyze"])
    ap.add_argument("--items", type=int, default=24, help="the first N of its calibration items (default 24)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", help="also write the table as markdown")
    args = ap.parse_args(argv)
    command = "python -m litestage_bench.studies.exit_trace " + " ".join(sys.argv[1:] if argv is None else argv)

    def run() -> str:
        table = [row for stage in args.stage for row in measure(args.policy, stage, args.items, args.batch_size)]
        head = ["stage", "threshold", "items", "items whose stage ended sooner", "derived items that differ",
                "CPU s, derived", "CPU s, computed", "derived / computed"]
        return (f"# Early-exit runs derived from one exit-off trace, against the real runs\n\nCommand: `{command}` "
                f"({machine_info().get('cpu')}, {torch.get_num_threads()} threads).\n\n"
                + tabulate(table, head, tablefmt="github") + "\n")
    return emit_markdown(run, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
