"""Can an early-exit threshold's stage output be derived from one exit-off run? A measurement, before
the search relies on it.

    python -m litestage_bench.studies.exit_trace POLICY.json --stage analyze --items 24 --out FILE.md

An exit rule only ends a row's generation: at the first step whose full window of confidences has a
mean at or below the threshold, the row stops (the executor drops that step's token) unless the
token already ends it. So, if every row's tokens and confidences do not depend on when the other
rows of its batch stop (rows leave the batch in bulk, which changes the batch's shape), the stage
output under any threshold is a prefix of the exit-off output, found from the exit-off run's
per-row confidence trace, and a threshold sweep would need one generation of the swept stage instead
of one per threshold.

This study runs the policy's skip plan (its `stages`) on the first N calibration items of its
search, the swept stage once with exit off under a recorder of every row's tokens and window means,
then once per threshold of the policy's `exit_thresholds_swept` for real, and compares each row's
stage content with the derived one, id for id. It reports, per threshold, the rows compared, how
many stopped early, and how many derived outputs differ from the real ones (0 everywhere: the
derivation is exact on these items, this machine and these numerics).
"""
from __future__ import annotations

import argparse
import sys

import torch
from tabulate import tabulate

from ..core.errors import UserError
from ..engine.early_exit import ConfidenceExit, ExitRule, _WindowCallback
from ..engine.plan import STAGES, SkipSet
from ..evaluation.reasoner import ReasonerConfig
from ..evaluation.runner import Session, evaluate_items
from ..methods.litestage import calibration_items, plan_from_sets
from ..methods.registry import load_policy
from ..records.results import emit_markdown, machine_info


class TraceRecorder(_WindowCallback):
    """A token callback that never stops a row and keeps, per generation and input row, the tokens it
    generated and the window mean at each step where the window is full."""

    memo_key = None

    def __init__(self, window: int, kind: str) -> None:
        super().__init__(window, kind)
        self.generations: list[dict[int, dict]] = []

    def __call__(self, step: int, logits: torch.Tensor, tokens: torch.Tensor, row_ids: torch.Tensor) -> torch.Tensor:
        if step == 0:
            self.generations.append({})
        rows = self.generations[-1]
        means = self._push(step, logits, row_ids)
        for i, (r, t) in enumerate(zip(row_ids.tolist(), tokens.tolist())):
            row = rows.setdefault(r, {"tokens": [], "means": {}})
            row["tokens"].append(t)
            if means is not None:
                row["means"][step] = float(means[i])
        return torch.zeros(len(row_ids), dtype=torch.bool, device=logits.device)


def derived_tokens(row: dict, threshold: float, stop_ids: set[int]) -> tuple[list[int], str]:
    """A row's generated ids and how it ended under `threshold`, from its exit-off trace: cut at the
    first step whose window mean is at or below it, unless that step's token ends the row anyway."""
    tokens = row["tokens"]
    for step in sorted(row["means"]):
        if row["means"][step] <= threshold:
            if step == len(tokens) - 1 and tokens[-1] in stop_ids:
                break
            return tokens[:step], "callback"
    return tokens, "stop" if tokens and tokens[-1] in stop_ids else "length"


def measure(policy_path: str, stage: str, n_items: int, batch_size: int) -> list[list]:
    policy = load_policy(policy_path)
    if policy.get("method") != "litestage":
        raise UserError(f"{policy_path} is not a LiteStage policy", "give a policy written by `search --method litestage`")
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
    stop_ids = set(reasoner.stops.for_stage(stage))
    recorder = TraceRecorder(opts["exit_window"], opts["exit_confidence"])
    with reasoner.tracing() as trace:
        evaluate_items(reasoner, plan, {stage: recorder}, items, batch_size, progress=False)
    rows = [row for gen in recorder.generations for _, row in sorted(gen.items())]
    off = [out for _, _, out in trace[stage]]
    if len(rows) != len(off):
        raise UserError(f"the trace holds {len(rows)} rows of {stage}, the run {len(off)}", "report this as a bug")
    table = []
    for threshold in sorted(thresholds, reverse=True):
        rule = ExitRule(opts["exit_window"], threshold, opts["exit_confidence"])
        with reasoner.tracing() as real:
            evaluate_items(reasoner, plan, {stage: ConfidenceExit(rule)}, items, batch_size, progress=False)
        cuts = [derived_tokens(row, threshold, stop_ids) for row in rows]
        derived = [reasoner.prompts.stage_content(*cut) for cut in cuts]
        got = [out for _, _, out in real[stage]]
        early = sum(how == "callback" for _, how in cuts)
        differ = sum(d != list(g) for d, g in zip(derived, got))
        table.append([stage, f"{threshold:.4g}", len(rows), early, differ])
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litestage_bench.studies.exit_trace", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy", help="a LiteStage policy (its plan, thresholds and calibration items)")
    ap.add_argument("--stage", choices=STAGES, default="analyze")
    ap.add_argument("--items", type=int, default=24, help="the first N of its calibration items (default 24)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", help="also write the table as markdown")
    args = ap.parse_args(argv)
    command = "python -m litestage_bench.studies.exit_trace " + " ".join(sys.argv[1:] if argv is None else argv)

    def run() -> str:
        table = measure(args.policy, args.stage, args.items, args.batch_size)
        head = ["stage", "threshold", "rows", "rows stopped early", "derived outputs that differ"]
        return (f"# Early-exit outputs derived from one exit-off trace\n\nCommand: `{command}` "
                f"({machine_info().get('cpu')}, {torch.get_num_threads()} threads).\n\n"
                + tabulate(table, head, tablefmt="github") + "\n")
    return emit_markdown(run, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
