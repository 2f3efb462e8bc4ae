"""Lossless against lossy: per model and benchmark, the self-speculative methods beside dense and
lossy LiteStage on the same items, with the drafting metrics that explain their speed.

    python -m litestage_bench.studies.lossless RECORD.json|FOLDER ... --out results/lossless/table.md

Per record: speedup [95% CI] (interleaved with dense), accuracy, agreement, items whose outputs
are identical to dense's, and for a drafted method per stage R/A/S: tokens per verify step,
acceptance rate, the draft's share of decode time, and the costs that decide its speed:
- c = seconds per draft step and v = seconds per verify step, both relative to d, a dense decode
  step. d is the method's decode seconds per token times the measured decode speedup (the
  interleaved decomposition), so all three come from the same run;
- the acceptance a draft of length k needs to break even, with i.i.d. acceptance alpha:
  (1 - alpha^(k+1)) / (1 - alpha) tokens per round must equal (k c + v) / d. "none" means even
  alpha = 1 cannot pay for the round;
- what the same acceptance would give where decoding is bound by reading the weights (a GPU at
  batch 1): a verify block costs one dense step and a draft step its executed fraction of the
  sub-layer FLOPs (embedding and head not counted), so the decode speedup is tokens per verify
  step / (drafts per verify step x that fraction + 1).
Then each lossy record against the fastest lossless one: the speed ratio (paired t or z test,
as in the headline table) and the answers that the extra speed cost.
"""
from __future__ import annotations

import sys
from collections import defaultdict

from tabulate import tabulate

from ..engine.plan import STAGES
from ..records.report import fmt_num, fmt_p, policy_name, speedup_ci_cell
from ..records.results import ResultRecord
from ..records.timing import rounds_of
from .headline import records_table_main, speed_ratio_test

LOSSLESS = ("selfspec", "litestage-spec")


def _label(r: ResultRecord) -> str:
    name = policy_name(r.policy)
    return r.method if name in ("-", r.method) else f"{r.method} ({name})"


def _per_stage(r: ResultRecord, key: str, fmt: str) -> str:
    spec = r.speculative or {}
    return "/".join(fmt_num((spec.get(s) or {}).get(key), fmt) for s in STAGES)


def _decode_seconds_per_token(r: ResultRecord, stage: str) -> float | None:
    """The method's decode seconds per generated token of a stage over its timed rounds."""
    spent, tokens = 0.0, 0
    for it in r.items:
        for entry in rounds_of(it):
            if stage in entry.get("stage_s", {}) and stage in entry.get("prefill_s", {}):
                spent += entry["stage_s"][stage] - entry["prefill_s"][stage]
                tokens += max(it.tokens.get(stage, 0), 1)
    return spent / tokens if tokens else None


def step_costs(r: ResultRecord, stage: str) -> tuple[float, float] | None:
    """(c/d, v/d): a draft step's and a verify step's seconds relative to a dense decode step."""
    spec = (r.speculative or {}).get(stage)
    factor = ((r.speedup_decomposition or {}).get(stage) or {}).get("decode_per_token_factor")
    own = _decode_seconds_per_token(r, stage)
    # seconds per step from the timed (batch-1) items only; records without their counts show "-"
    if not spec or not spec.get("timed_drafted") or not spec.get("timed_verify_steps") or not factor or not own:
        return None
    dense_step = own * factor
    return (spec["draft_s"] / spec["timed_drafted"] / dense_step,
            spec["verify_s"] / spec["timed_verify_steps"] / dense_step)


def break_even_acceptance(k: int, draft_cost: float, verify_cost: float) -> float | None:
    """The i.i.d. acceptance alpha at which drafting k tokens per round costs what dense decoding
    of its expected tokens costs; None when even alpha = 1 is not enough."""
    need = k * draft_cost + verify_cost  # dense steps a round must yield

    def tokens(alpha: float) -> float:
        return sum(alpha ** j for j in range(k + 1))

    if tokens(1.0) < need:
        return None
    if tokens(0.0) >= need:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(60):  # tokens(alpha) increases with alpha: bisection
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tokens(mid) < need else (lo, mid)
    return hi


def bandwidth_bound_speedup(spec: dict) -> float | None:
    """The decode speedup the measured acceptance would give where a forward costs the weights it
    reads: a verify block as one dense step, a draft step its executed fraction of sub-layer FLOPs."""
    if not spec.get("verify_steps") or spec.get("draft_cost_fraction") is None:
        return None
    drafts_per_step = spec["drafted"] / spec["verify_steps"]
    return spec["tokens_per_step"] / (drafts_per_step * spec["draft_cost_fraction"] + 1.0)


def _draft_k(r: ResultRecord, stage: str) -> int | None:
    draft = ((r.policy or {}).get("drafts") or {}).get(stage) if isinstance(r.policy, dict) else None
    return draft["k"] if draft else None


def _costs_cell(r: ResultRecord) -> tuple[str, str, str]:
    cs, vs, needs = [], [], []
    for s in STAGES:
        costs, k = step_costs(r, s), _draft_k(r, s)
        cs.append(fmt_num(costs[0] if costs else None, ".2f"))
        vs.append(fmt_num(costs[1] if costs else None, ".2f"))
        if costs and k:
            alpha = break_even_acceptance(k, *costs)
            needs.append("none" if alpha is None else f"{alpha:.2f}")
        else:
            needs.append("-")
    return "/".join(cs), "/".join(vs), "/".join(needs)


def method_rows(records: list[ResultRecord]) -> list[list[str]]:
    rows = []
    for r in sorted(records, key=lambda r: (r.method != "dense", r.method not in LOSSLESS, -(r.speedup or 0))):
        fid = r.fidelity or {}
        identical = f"{fid['identical_outputs']}/{fid['n']}" if "identical_outputs" in fid else "-"
        lo, hi = r.accuracy_ci95
        rows.append([_label(r), str(r.n), speedup_ci_cell(r), f"{r.accuracy:.3f} [{lo:.3f}, {hi:.3f}]",
                     fmt_num(fid.get("agreement"), ".3f"), identical, _per_stage(r, "tokens_per_step", ".2f"),
                     _per_stage(r, "acceptance_rate", ".2f"), _per_stage(r, "draft_share", ".2f"), *_costs_cell(r),
                     "/".join(fmt_num(bandwidth_bound_speedup((r.speculative or {}).get(s) or {}), ".2f")
                              for s in STAGES)])
    return rows


def lossy_rows(records: list[ResultRecord]) -> list[list[str]]:
    """Each lossy record against the fastest lossless one of the group."""
    lossless = [r for r in records if r.method in LOSSLESS and r.speedup]
    if not lossless:
        return []
    best = max(lossless, key=lambda r: r.speedup)
    rows = []
    for r in sorted((r for r in records if r.method not in (*LOSSLESS, "dense") and r.speedup), key=lambda r: -r.speedup):
        ratio, p, test = speed_ratio_test(r, best)
        fid = r.fidelity or {}
        rows.append([_label(r), speedup_ci_cell(r), _label(best), speedup_ci_cell(best), f"{ratio:.2f}x",
                     f"{fmt_p(p)} ({test})",
                     f"{fid.get('changed', '-')}/{fid.get('n', '-')}", fmt_num(fid.get("agreement"), ".3f"),
                     f"-{fid.get('correct_to_wrong', '-')}/+{fid.get('wrong_to_correct', '-')}"])
    return rows


METHOD_COLUMNS = ["method", "n", "speedup [95% CI]", "accuracy [95% CI]", "agreement", "identical outputs",
                  "tokens/verify R/A/S", "acceptance R/A/S", "draft share R/A/S", "draft step / dense R/A/S",
                  "verify step / dense R/A/S", "break-even acceptance R/A/S", "bandwidth-bound decode speedup R/A/S"]
LOSSY_COLUMNS = ["lossy", "its speedup", "fastest lossless", "its speedup", "speed ratio", "p", "answers changed",
                 "agreement", "flips -c2w/+w2c"]


def lossless_markdown(records: list[ResultRecord], command: str) -> str:
    groups: dict[tuple[str, str], list[ResultRecord]] = defaultdict(list)
    for r in records:
        groups[(r.model, r.benchmark)].append(r)
    parts = ["# Lossless (self-speculative) against lossy skipping", "", f"Rendered with `{command}`.", ""]
    for (model, bench), group in sorted(groups.items()):
        timed = [r.timing.get("n_timed") for r in group if r.method in LOSSLESS]
        parts += [f"## {model} / {bench}", "",
                  tabulate(method_rows(group), headers=METHOD_COLUMNS, tablefmt="github", disable_numparse=True), ""]
        if timed:
            counts = ", ".join(str(t) for t in sorted({t for t in timed if t})) or "-"
            parts += [f"Timed items per lossless record: {counts}; "
                      "drafting metrics over all evaluated items.", ""]
        lossy = lossy_rows(group)
        if lossy:
            parts += ["What the lost answers bought (each lossy record against the fastest lossless one):", "",
                      tabulate(lossy, headers=LOSSY_COLUMNS, tablefmt="github", disable_numparse=True), ""]
        parts += ["Records:", *sorted({f"- `{r.command}`" for r in group if r.command}), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    return records_table_main("litestage_bench.studies.lossless", __doc__, lossless_markdown, argv)


if __name__ == "__main__":
    sys.exit(main())
