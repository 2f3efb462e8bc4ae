"""What a LiteStage search cost, an earlier policy beside a new one of the same search (model,
benchmark, target), read from the policies alone: candidates, calibration items measured, and the
CPU seconds of their answers and timings.

    python -m litestage_bench.studies.search_cost --pair EARLIER.json NEW.json [--pair ...]
        [--records EARLIER_RECORD.json NEW_RECORD.json ...] --out results/search/cost.md

With `--records`, a second table sets the chosen policies' records on the evaluation items side by
side: each one's speedup, the search's target test on those items, and the new speedup over the
earlier one, paired by timed item.

Seconds are the candidates' own `answers_seconds` and `timing_seconds`: the CPU time each measured
piece took when it was measured, also for a piece the new search read back from its rows (measured
in an earlier period, perhaps on another CPU: the table names the CPUs). Each distinct plan counts
once (a sweep's accepted setting repeats the previous sweep's choice); "every row" counts the rows
as listed, as the earlier comparison did. The dense calibration pass is in neither. Seconds are
wall seconds, which grow with whatever else the machine ran; *stage runs* (one stage of one batch of
8 calibration items executed, not reused) count the answers' work on any machine and load; a
search's early-exit runs derived from an exit-off run (StageMemo.exit_trace) are not executed and
are named apart ("+N derived").
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from tabulate import tabulate

from ..core.errors import UserError
from ..records.results import emit_markdown
from ..records.timing import item_log_speedups, paired_speed_ratio

COLUMNS = ["search", "policy", "CPU", "candidates (distinct plans)", "items measured", "stage runs", "answers s",
           "timing s", "total s (every row)", "new / earlier: s", "new / earlier: stage runs", "stopped (why)",
           "chosen", "chosen: calibration test", "speedup [95% CI]"]


def load_policy(path: str) -> dict:
    try:
        policy = json.loads(Path(path).read_text(encoding="utf-8"))
        policy["candidates"], policy["chosen"], policy["target"]  # noqa: B018 (the keys a cost needs)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not a LiteStage policy with candidates ({err!r})",
                        "pass files written by `litestage-bench search --method litestage`") from None
    return policy


def _plan(row: dict) -> str:
    return json.dumps({"sets": row.get("sets"), "exits": row.get("exits")}, sort_keys=True)


def cost(policy: dict) -> dict:
    """Distinct candidate plans (dense left out), their items and seconds, and the seconds of every row."""
    rows = [r for r in policy["candidates"] if r.get("sweep") != "dense" and r.get("label") != "dense"]
    distinct: dict[str, dict] = {}
    for r in rows:
        distinct.setdefault(_plan(r), r)
    n = policy["calibration"]["n"]

    def seconds(rs, key: str) -> float:
        return sum(r.get(key) or 0.0 for r in rs)
    why = Counter((r.get("stopped") or {}).get("why", "all items") for r in distinct.values())
    cpus = sorted({str(r.get(k)) for r in distinct.values() for k in ("answers_cpu", "timing_cpu") if r.get(k)})
    return {"candidates": len(distinct), "items": sum(r["flips"].get("n", n) for r in distinct.values()),
            "stage_runs": sum(r.get("stage_runs") or 0 for r in distinct.values()),
            "stage_runs_derived": sum(r.get("stage_runs_derived") or 0 for r in distinct.values()),
            "answers": seconds(distinct.values(), "answers_seconds"),
            "timing": seconds(distinct.values(), "timing_seconds"),
            "every_row": seconds(rows, "answers_seconds") + seconds(rows, "timing_seconds"),
            "why": why, "cpus": cpus}


def _target(policy: dict) -> str:
    t = policy["target"]
    return f"acc -{t['tolerance_points']:g} pts" if t["kind"] == "accuracy" else f"agree {t['min_agreement']:g}"


def _chosen(policy: dict) -> tuple[str, str, str]:
    stages = policy["stages"]
    exits = policy.get("early_exit") or {}
    plan = " ".join(f"{s[0].upper()}{stages[s]['n_skip']}" + ("e" if exits.get(s) else "") for s in stages)
    chosen = policy["chosen"]
    t = chosen.get("test") or {}
    test = f"{t.get('decision', '-')} {t.get('estimate', 0):+.3f} [{t.get('lower', 0):+.3f}]" if t else "-"
    ci = chosen.get("speedup_ci95") or (None, None)
    speed = "-" if chosen.get("speedup") is None else (
        f"{chosen['speedup']:.2f}x" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci[0] else ""))
    return plan, test, speed


def pair_rows(earlier_path: str, new_path: str) -> list[list[str]]:
    earlier, new = load_policy(earlier_path), load_policy(new_path)
    if (earlier["model"], earlier["bench"], _target(earlier)) != (new["model"], new["bench"], _target(new)):
        raise UserError(f"{earlier_path} and {new_path} are not the same search (model, benchmark, target)",
                        "pair the policies of one model, benchmark and target")
    search = f"{new['model']} {new['bench']} {_target(new)}"
    costs = [cost(earlier), cost(new)]
    base, base_runs = costs[0]["answers"] + costs[0]["timing"], costs[0]["stage_runs"]
    out = []
    for name, policy, c in (("earlier", earlier_path, costs[0]), ("new", new_path, costs[1])):
        total = c["answers"] + c["timing"]
        plan, test, speed = _chosen(load_policy(policy))
        out.append([search if name == "earlier" else "", f"{name}: `{policy}`", ", ".join(c["cpus"]),
                    str(c["candidates"]), str(c["items"]),
                    str(c["stage_runs"]) + (f" (+{c['stage_runs_derived']} derived)"
                                            if c["stage_runs_derived"] else ""),
                    f"{c['answers']:.0f}",
                    f"{c['timing']:.0f}", f"{total:.0f} ({c['every_row']:.0f})",
                    "-" if name == "earlier" else f"{total / base:.2f}",
                    "-" if name == "earlier" or not base_runs else f"{c['stage_runs'] / base_runs:.2f}",
                    ", ".join(f"{k} {v}" for k, v in sorted(c["why"].items())), plan, test, speed])
    return out


RECORD_COLUMNS = ["search", "record", "speedup [95% CI]", "target on the evaluation items",
                  "new / earlier speedup [95% CI], p"]


def _eval_test(record: dict, policy: dict) -> str:
    """The policy's target test (decide) on the record's evaluation items against dense."""
    from ..methods.search_decisions import decide

    fid = record.get("fidelity") or {}
    if not fid.get("n"):
        return "-"
    m = {"flips": {k: fid[k] for k in ("n", "wrong_to_correct", "correct_to_wrong")}, "agreement": fid["agreement"]}
    t = decide(policy["target"], m, (policy.get("options") or {}).get("confidence", 0.95))
    return f"{t['decision']}: {t['statistic']} {t['estimate']:+.3f} [{t['lower']:+.3f}, {t['upper']:+.3f}] (n {t['n']})"


def record_rows(earlier_path: str, new_path: str) -> list[list[str]]:
    """Two records of the chosen policies (earlier, new) on the same evaluation items."""
    records = []
    for path in (earlier_path, new_path):
        try:
            records.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read record {path} ({err})", "give two `run` records of the chosen policies") from err
    policies = [load_policy((r.get("policy") or {}).get("policy") or "") for r in records]
    if [it["id"] for it in records[0]["items"]] != [it["id"] for it in records[1]["items"]]:
        raise UserError(f"{earlier_path} and {new_path} hold other evaluation items", "run both on the same items")
    logs = [item_log_speedups({it["id"]: it.get("timing_rounds") or [] for it in r["items"]},
                              (r.get("timing") or {}).get("dense_rounds") or {}) for r in records]
    paired = paired_speed_ratio(logs[1], logs[0]) if all(logs) else None
    if all(logs) and paired is None:
        raise UserError(f"{earlier_path} and {new_path} share fewer than 3 timed items",
                        "time both on the same --timed items")
    if paired is not None:
        ci = paired["ci95"]
        compared = (f"{paired['ratio']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}], p {paired['p']:.3f} "
                    f"(paired t, {paired['n']} items)")
    else:  # a record from before records kept dense's rounds per item: its speedup's CI only
        from .headline import log_ratio_test

        ratio, p = log_ratio_test(records[1]["speedup"], records[1].get("speedup_ci95"), records[0]["speedup"],
                                  records[0].get("speedup_ci95"))
        compared = f"{ratio:.3f}, p {p:.3f} (z on the two CIs: a record holds no per-item dense times)" if p is not None \
            else f"{ratio:.3f} (no test: a record has no CI)"
    search = f"{policies[1]['model']} {policies[1]['bench']} {_target(policies[1])}"
    out = []
    for name, path, rec, pol in (("earlier", earlier_path, records[0], policies[0]),
                                 ("new", new_path, records[1], policies[1])):
        speed_ci = rec.get("speedup_ci95") or (None, None)
        out.append([search if name == "earlier" else "", f"{name}: `{path}`",
                    f"{rec['speedup']:.2f}x" + (f" [{speed_ci[0]:.2f}, {speed_ci[1]:.2f}]" if speed_ci[0] else ""),
                    _eval_test(rec, pol),
                    "-" if name == "earlier" else compared])
    return out


def records_section(pairs: list[list[str]]) -> str:
    rows = [r for a, b in pairs for r in record_rows(a, b)]
    return ("\n## The chosen policies on the evaluation items\n\nEach record's speedup is timed interleaved "
            "with dense on its timed items; the ratio of the two is paired by item where both records hold "
            "dense's rounds per item (the difference of the per-item log speedups, Student t), else a z test "
            "on the two speedups' CIs. The target test is the search's own (`decide`, its confidence) "
            "on the evaluation items against dense.\n\n"
            + tabulate(rows, headers=RECORD_COLUMNS, tablefmt="github", disable_numparse=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litestage_bench.studies.search_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", nargs=2, action="append", required=True, metavar=("EARLIER", "NEW"))
    ap.add_argument("--records", nargs=2, action="append", default=[], metavar=("EARLIER", "NEW"),
                    help="the chosen policies' records on the evaluation items (same items), compared paired")
    ap.add_argument("--out", help="also write the markdown table here")
    args = ap.parse_args(argv)
    command = "python -m litestage_bench.studies.search_cost " + " ".join(sys.argv[1:] if argv is None else argv)

    def render() -> str:
        rows = [r for a, b in args.pair for r in pair_rows(a, b)]
        table = tabulate(rows, headers=COLUMNS, tablefmt="github", disable_numparse=True)
        return (f"# What the LiteStage searches cost\n\nRendered with `{command}`.\n\n"
                "Seconds: CPU seconds of one one-thread process, as each piece was measured (the CPU column "
                "names where); each distinct plan once, every row in brackets; the dense calibration pass in "
                "neither. Chosen: #skip per stage (R, A, S), `e` with an early exit.\n\n" + table + "\n"
                + (records_section(args.records) if args.records else ""))

    return emit_markdown(render, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
