"""A finished LiteStage search replayed on its own rows with another number of interim looks (and
the threshold sweep's early end), to see what the search would have measured and decided, before
spending CPU on a new default.

    python -m litestage_bench.studies.looks_replay POLICY.json --looks 4 8 [--threshold-sweep] [--out FILE.md]

Each candidate's per-item answers are read from the rows the policy names (`candidates[*].rows`,
under `search_cost.rows.dir`), and dense's from the search's dense row, answered by the search's
rule. A look plan (`search_decisions.look_plan`, the policy's options with `looks` replaced) is run
over them with the search's own `look_test`: the candidate stops at the first look that stops it.
A look past the items the search measured cannot be replayed: the candidate is then taken to stop
at the first look at or past them, with the decision it had (what the search saw there). A
"slower" stop (it needs the timing) is kept where it was. Stage runs scale with the items measured
(they count batches of each stage run). `--threshold-sweep`: in each early-exit sweep, the
thresholds after the first meeting one are left out (`search_sweep.threshold_sweep`). Each distinct
plan counts once, as in `studies.search_cost`. The power at each look count is `target_power`'s.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from tabulate import tabulate

from ..core.errors import UserError
from ..methods.search_decisions import look_plan, look_test, target_power
from ..methods.search_rows import dense_row_items, load_row
from ..records.results import emit_markdown
from .search_cost import _plan, load_policy


@dataclass
class Replayed:
    label: str
    n: int  # items measured
    why: str
    decision: str
    stage_runs: float


def _rows_dir(policy: dict, path: str) -> Path:
    where = (policy.get("search_cost", {}).get("rows") or {}).get("dir")
    if not where:
        raise UserError(f"{path} names no rows (search_cost.rows.dir)", "replay a policy of the row-keeping search")
    return Path(where)


def dense_answers(rows: Path, rule: str, ids: list[str]) -> dict[str, tuple[str, bool]]:
    """Per calibration item id, dense's (answer, correct) by `rule`, from the search's dense row: a
    row over these calibration items (a folder may hold one per row format, e.g. before the dense row
    served every rule; they must answer alike)."""
    found = [p for p in sorted(rows.glob("dense-*.json")) if not p.name.startswith("dense-batch-")]
    answers = []
    for path in found:
        value = load_row(path, "dense")["value"]
        if value.get("ids") == ids:
            answers.append({it.id: (it.prediction, bool(it.correct)) for it in dense_row_items(value, path, rule)})
    if not answers:
        raise UserError(f"{rows} holds no dense row over the policy's calibration items",
                        "replay a search whose dense pass finished")
    if any(a != answers[0] for a in answers[1:]):
        raise UserError(f"{rows} holds dense rows over these items that answer differently",
                        "keep the dense row the search read, remove the other")
    return answers[0]


def candidate_items(rows: Path, names: list[str]) -> list[tuple[str, str, bool]]:
    """A candidate's (id, answer, correct) per item, over its rows in the order measured."""
    out = []
    for name in names:
        cols = load_row(rows / name, "answers")["value"]["items"]
        out += list(zip(cols["ids"], cols["prediction"], (bool(c) for c in cols["correct"])))
    return out


def counts(items: list[tuple[str, str, bool]], dense: dict[str, tuple[str, bool]]) -> dict:
    """The answer fields `decide` reads, over these items, against dense."""
    changed = sum(answer != dense[i][0] for i, answer, _ in items)
    c2w = sum(dense[i][1] and not ok for i, _, ok in items)
    w2c = sum(ok and not dense[i][1] for i, _, ok in items)
    n = len(items)
    return {"flips": {"correct_to_wrong": c2w, "wrong_to_correct": w2c, "changed": changed, "n": n},
            "agreement": (n - changed) / n if n else 1.0}


def replay_candidate(c: dict, items: list, dense: dict, target: dict, plan) -> Replayed:
    """Where the look plan `plan` stops candidate `c` (its measured `items`)."""
    old = c.get("stopped") or {}
    measured, old_decision = len(items), _decision(c)
    per_item = (c.get("stage_runs") or 0) / measured if measured else 0.0
    for look, end in enumerate(plan.ends):
        if end > measured or (old.get("why") == "slower" and end >= measured):
            return Replayed(c["label"], end, f"{old.get('why', 'all items')} (as measured)", old_decision,
                            per_item * end)
        t, why = look_test(target, counts(items[:end], dense), look, plan)
        if why:
            return Replayed(c["label"], end, why, t["decision"], per_item * end)
    raise AssertionError("the last look always decides")


def _decision(c: dict) -> str:
    return (c.get("test") or {}).get("decision", "?")


def replay(policy: dict, path: str, looks: int, threshold_sweep: bool) -> dict:
    """The search of `policy` replayed with `looks` interim looks: its candidates (distinct plans,
    dense left out) and the totals."""
    rows = _rows_dir(policy, path)
    dense = dense_answers(rows, policy["reasoner_config"]["answer_rule"], policy["calibration"]["ids"])
    opts = SimpleNamespace(**{**policy["options"], "looks": looks})
    plan = look_plan(policy["calibration"]["n"], opts)
    target = {**policy["target"], "tolerance_points": policy["options"]["tolerance"]}
    seen, out, met_in = set(), [], set()
    for c in policy["candidates"]:
        if c.get("sweep") == "dense" or c.get("label") == "dense" or _plan(c) in seen:
            continue
        sweep = c.get("sweep") or ""
        is_threshold = sweep.endswith("early exit") and "exit off" not in c["label"]
        if threshold_sweep and is_threshold and sweep in met_in:
            continue  # a lower threshold of a sweep whose higher one met: not measured
        seen.add(_plan(c))
        names = [name for name in c.get("rows") or [] if name.startswith("answers-")]  # not its timing rows
        r = replay_candidate(c, candidate_items(rows, names), dense, target, plan)
        if is_threshold and r.decision == "meets":
            met_in.add(sweep)
        out.append(r)
    return {"looks": looks, "ends": list(plan.ends), "candidates": out,
            "items": sum(r.n for r in out), "stage_runs": sum(r.stage_runs for r in out),
            "power": target_power(opts, policy["calibration"]["n"])}


def _power_text(power: dict) -> str:
    by = power.get("power_by_true_agreement") or power.get("power_by_discordance") or {}
    return ", ".join(f"{k}: {v:.3f}" for k, v in by.items())


def render(policy_path: str, results: list[dict], earlier_stage_runs: int | None, command: str) -> str:
    base = results[0]
    head = ["candidate"] + [f"looks {r['looks']} ({', '.join(map(str, r['ends']))})" for r in results]
    labels = list(dict.fromkeys(c.label for r in results for c in r["candidates"]))
    body = []
    for label in labels:
        cells = []
        for r in results:
            c = next((c for c in r["candidates"] if c.label == label), None)
            cells.append(f"{c.n} items, {c.why}: {c.decision}" if c else "not measured")
        body.append([label] + cells)
    body.append(["items / stage runs"] + [f"{r['items']} / {r['stage_runs']:.0f}" for r in results])
    if earlier_stage_runs:
        body.append(["stage runs / the earlier search's"] + [f"{r['stage_runs'] / earlier_stage_runs:.2f}"
                                                             for r in results])
    body.append(["power"] + [_power_text(r["power"]) for r in results])
    changed = [c.label for r in results[1:] for c in r["candidates"]
               if (b := next((x for x in base["candidates"] if x.label == c.label), None)) and b.decision != c.decision]
    note = ("Decisions that differ from the first column's: " + (", ".join(changed) if changed else "none") + ".")
    return (f"# {policy_path}: its search replayed with other interim looks\n\nRendered with `{command}`.\n\n"
            f"{tabulate(body, headers=head, tablefmt='github')}\n\n{note}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litestage_bench.studies.looks_replay", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy")
    ap.add_argument("--looks", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--threshold-sweep", action="store_true", help="leave out thresholds after a sweep's first meeting one")
    ap.add_argument("--earlier-stage-runs", type=int, help="the earlier search's stage runs, for the ratio row")
    ap.add_argument("--out", help="also write the table here (markdown)")
    args = ap.parse_args(argv)
    command = "python -m litestage_bench.studies.looks_replay " + " ".join(sys.argv[1:] if argv is None else argv)

    def rendered() -> str:
        if any(k < 1 for k in args.looks):
            raise UserError("--looks must be >= 1", "e.g. --looks 4 8")
        policy = load_policy(args.policy)
        results = [replay(policy, args.policy, k, args.threshold_sweep) for k in args.looks]
        return render(args.policy, results, args.earlier_stage_runs, command)

    return emit_markdown(rendered, args.out)


if __name__ == "__main__":
    sys.exit(main())
