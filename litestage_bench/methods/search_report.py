"""`litestage-bench report --search DIR`: a LiteStage search's sweep, read back from its rows.

Every candidate found in the folder, with its answers merged over the chunks that landed, its
target test replayed look by look as the search decides it (the target and options of `--policy`,
else the default 4-point accuracy tolerance at 95% with the default alpha spending; the looks from
dense's chunks), where it stops, and its timing. With `--policy`, also an audit: each of the
policy's candidates recomputed from the chunks it names, so anyone can check why its layer sets
were chosen.
"""
from __future__ import annotations

import json
from pathlib import Path

from tabulate import tabulate

from ..core.errors import UserError
from ..engine.plan import STAGES
from .litestage import SearchOptions
from .search_decisions import LookPlan, decide, merge_answer_counts, run_looks, spending
from .search_rows import key_sha, load_row

DEFAULT_TARGET = {"kind": "accuracy", "tolerance_points": 4.0}


def _plan_id(key: dict) -> str:
    """What identifies one candidate of one search across its rows (its chunks and its timing)."""
    return key_sha({k: key.get(k) for k in ("canary", "items", "sets", "exits")})


def candidates(root: Path) -> list[dict]:
    """Per candidate plan: label, answers merged over the contiguous chunks from item 0, timing."""
    if not root.is_dir():
        raise UserError(f"search rows: {root} is not a folder",
                        "give the folder a search wrote its rows to, e.g. results/search/MODEL_BENCH")
    found: dict[str, dict] = {}
    for path in sorted(root.glob("answers-*.json")):
        row = load_row(path, "answers")
        c = found.setdefault(_plan_id(row["key"]), {"label": row.get("label", "?"), "key": row["key"],
                                                    "chunks": {}, "files": {}, "timing": None, "rows": []})
        c["chunks"][tuple(row["key"].get("chunk", (0, 0)))] = row["value"]
        c["files"][path.name] = row["value"]
        c["rows"].append(path.name)
    for path in sorted(root.glob("timing-*.json")):
        row = load_row(path, "timing")
        c = found.get(_plan_id(row["key"]))
        if c is not None:
            c["timing"], c["timing_cpu"] = row["value"], row["key"].get("cpu")
            c["rows"].append(path.name)
    out = []
    for c in found.values():
        parts, end = [], 0
        while True:  # the chunks that continue from item 0
            nxt = next((v for (lo, hi), v in sorted(c["chunks"].items()) if lo == end), None)
            if nxt is None:
                break
            parts.append(nxt)
            end += nxt["n"]
        if parts:
            out.append({**c, "answers": merge_answer_counts(parts)})
    return out


def rows_cost(root: Path) -> dict[str, dict[str, float]]:
    """Wall seconds of one-thread work the folder's rows hold, per piece (answers chunks, batch-1
    timings, the dense pass where its batches kept their cost) and per CPU they ran on: what a search
    spanning several machines has cost so far."""
    out: dict[str, dict[str, float]] = {}

    def add(piece: str, cpu, seconds) -> None:
        if isinstance(seconds, (int, float)):
            entry = out.setdefault(piece, {})
            entry[str(cpu)] = entry.get(str(cpu), 0.0) + seconds
    for path in sorted(root.glob("answers-*.json")):
        value = load_row(path, "answers")["value"]
        add("answers", value.get("cpu"), value.get("seconds"))
    for path in sorted(root.glob("timing-*.json")):
        value = load_row(path, "timing")["value"]
        add("timing", value.get("timing_cpu"), value.get("timing_seconds"))
    for path in sorted(root.glob("dense-*.json")):
        if path.name.startswith("dense-batch-"):  # a pass under way: its batches so far
            cost = load_row(path, "dense-batch")["value"].get("cost")
            costs = {cost["cpu"]: cost} if cost else {}
        else:
            costs = (load_row(path, "dense")["value"].get("cost") or {}).get("per_cpu", {})
        for cpu, cost in costs.items():
            add("dense", cpu, cost.get("seconds"))
    return out


def cost_line(root: Path) -> str:
    cost = rows_cost(root)
    if not cost:
        return "Measured so far: nothing with its seconds in these rows"
    parts = [f"{piece} {sum(v.values()) / 3600:.2f} h (" + ", ".join(f"{cpu} {s / 3600:.2f}" for cpu, s in sorted(v.items()))
             + ")" for piece, v in cost.items()]
    total = sum(sum(v.values()) for v in cost.values())
    return f"Measured so far, one-thread hours by CPU: {'; '.join(parts)}; in all {total / 3600:.2f} h"


def _is_dense(c: dict) -> bool:
    key = c["key"]
    return not any(v for s in key.get("sets", {}).values() for v in (s or {}).values()) and \
        not any(key.get("exits", {}).values())


def sweep_table(root: str | Path, policy: dict | None = None) -> str:
    """The sweep as a table, and with a policy the audit of its candidates against their rows."""
    root = Path(root)
    cands = candidates(root)
    dense = next((c for c in cands if _is_dense(c)), None)
    target = dict((policy or {}).get("target") or DEFAULT_TARGET)
    if target["kind"] == "accuracy" and dense is not None:
        target.setdefault("dense_accuracy", dense["answers"]["accuracy"])
    options = (policy or {}).get("options") or {}
    confidence = options.get("confidence", 0.95)
    # a policy searched before efficacy stops spent nothing on them
    share = options.get("efficacy_share", 0.0) if policy else SearchOptions.efficacy_share
    # and one searched before the futility confidence stopped at the plain one
    futility = options.get("futility_confidence") if policy else SearchOptions.futility_confidence
    ends = sorted(hi for _, hi in dense["chunks"]) if dense else []
    plan = (LookPlan(tuple(ends), confidence, *spending(confidence, share, len(ends) - 1), futility)
            if ends else None)
    table = []
    for c in sorted(cands, key=lambda c: (not _is_dense(c), c["label"])):
        a, t, stop = c["answers"], c["timing"] or {}, "-"
        if plan is not None and not _is_dense(c):
            replayed, _, test, stopped = run_looks(target, plan, lambda lo, hi, c=c: c["chunks"].get((lo, hi)))
            a, stop = replayed or a, f"{stopped['look']}/{stopped['of']} {stopped['why']}"
            if not replayed:
                test = decide(target, a, confidence)
        else:
            test = decide(target, a, confidence)
        speed = t.get("speedup")
        ci = t.get("speedup_ci95") or (None, None)
        table.append([c["label"], a["flips"]["n"], f"{a['accuracy']:.3f}", f"{a['agreement']:.3f}",
                      f"{test['decision']} {test['estimate']:+.3f} [{test['lower']:+.3f}, {test['upper']:+.3f}]", stop,
                      "-" if speed is None else f"{speed:.2f}x" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci[0] else ""),
                      "/".join(f"{a['tokens'][s]:.1f}" for s in STAGES),
                      "/".join(f"{a['executed_cost_fraction'][s]:.2f}" for s in STAGES),
                      a["answers_cpu"], c.get("timing_cpu") or "-"])
    what = (f"accuracy difference vs dense >= -{target['tolerance_points']:g} points" if target["kind"] == "accuracy"
            else f"agreement >= {target['min_agreement']:g}")
    spent = "" if plan is None or plan.efficacy is None else \
        f" (interim looks' efficacy at {plan.efficacy:.4g}, the last look's at {plan.final:.4g})"
    lines = [f"Search rows in {root}: {len(cands)} candidates; target test: {what}, one-sided {confidence:.0%}{spent}",
             cost_line(root), "", tabulate(table, headers=["candidate", "n", "accuracy", "agreement", "test: estimate [bounds]",
                                          "stopped (look, why)", "speedup [95% CI]", "tokens R/A/S", "cost R/A/S",
                                          "answers CPU", "timing CPU"], tablefmt="github")]
    if policy is not None:
        lines += ["", audit(root, policy, cands)]
    return "\n".join(lines)


def audit(root: Path, policy: dict, cands: list[dict]) -> str:
    """Each policy candidate recomputed from the rows it names (`cands`: the folder's, read once by
    `candidates`): equal, differing, or rows missing."""
    by_name = {name: c for c in cands for name in c["rows"]}
    chunk_of = {name: value for c in cands for name, value in c["files"].items()}
    same, differ, missing = 0, [], []
    for row in policy.get("candidates", []):
        names = row.get("rows") or []
        have = [by_name.get(n) for n in names]
        if not names or any(h is None for h in have):
            missing.append(row.get("label", "?"))
            continue
        # the chunks the row names (a folder may hold more of them, measured for another target)
        named = [chunk_of[n] for n in names if n in chunk_of]
        a = merge_answer_counts(named) if named else have[0]["answers"]
        if (a["accuracy"], a["agreement"]) == (row["accuracy"], row["agreement"]):
            same += 1
        else:
            differ.append(row.get("label", "?"))
    chosen = policy.get("chosen", {})
    out = [f"Chosen: {json.dumps(policy.get('stages', {}), separators=(',', ':'))[:200]} "
           f"at {chosen.get('speedup', float('nan')):.2f}x (measured)",
           f"Audit: {same} of {len(policy.get('candidates', []))} policy candidates reproduce from their rows"]
    if differ:
        out.append(f"  differ from their rows: {', '.join(differ)}")
    if missing:
        out.append(f"  rows not in {root} (older policy or rows not committed): {len(missing)} candidates")
    return "\n".join(out)
