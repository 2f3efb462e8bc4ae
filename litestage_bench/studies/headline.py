"""The headline comparison: per model and benchmark, every method's speedup with its CI and its
decomposition, accuracy, agreement, flips and McNemar p against dense; then LiteStage against the
best baseline at matched speedup and at matched agreement, each difference with its test.

    python -m litestage_bench.studies.headline RECORD.json|FOLDER ... --out results/headline/table.md

Matching (suite decisions):
- the baselines are every method but dense and LiteStage's own variants (litestage-spec: its lossless
  form, shown in the table, not matched).
- matched speedup: the baselines whose speedup is within +/-0.1x of LiteStage's; the best is the
  most accurate of them. The difference is LiteStage's accuracy minus the baseline's on the same
  items (paired, 95% t interval) with the exact McNemar p of the two.
- matched agreement: the baselines whose answer agreement with dense is within +/-0.05 of
  LiteStage's; the best is the fastest of them. The difference is the ratio of their speedups, with
  the paired t test on the per-item differences of log speedup over the timed items both hold, where
  both records keep dense's rounds per item (`timing["dense_rounds"]`: each item's speedup is its own
  interleaved dense over the method, so an item's length, which moves both speedups, cancels, and two
  records timed against one dense by `retime-latency` share it exactly; coverage of its interval at
  3-20 items: results/intervals/coverage.md, "record - record"); else a z test on the log ratio whose
  standard errors come from each speedup's 95% CI (records timed in their own interleaved runs:
  independent estimates). The p column names the test.
- without a baseline within the window, the row compares the nearest one, named "none (nearest X)".
- the predicted speedup beside the measured one: the latency model's prediction for the record made
  without it (`held_out` of the record in the fits under results/latency/, `studies.latency_fit`),
  found by the path its `run` command wrote and its measured speedup; "-" for a record no fit holds.
- where records were re-timed at batch B (`timing.throughput`, `litestage-bench retime-throughput`),
  the table gains the batch-B column and LiteStage a third row: matched agreement again, the fastest
  baseline by its batch-B speedup, the z test on the batch-B CIs (each over its chunks).
- a baseline that gives one answer on every item is left out of both matchings (named under the
  table): its agreement is only dense's share of that answer, and its accuracy that answer's share
  of the gold labels, so it says nothing about reasoning. The "top answer" column shows each
  method's most common answer and its share, dense's included.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

from tabulate import tabulate

from ..core.errors import UserError
from ..records import stats
from ..records.fidelity import same_answer
from ..records.report import (DECOMPOSITION_COLUMNS, THROUGHPUT_COLUMN, decomposition_cells, flips_cell, fmt_num,
                              fmt_p, paired_cell, policy_name, speedup_ci_cell, throughput_cell)
from ..records.results import ResultRecord, emit_markdown, load_record, record_files
from ..records.timing import item_log_speedups, paired_speed_ratio, rounds_of

SPEED_MATCH = 0.1  # x
AGREEMENT_MATCH = 0.05
LITESTAGE = "litestage"


def _label(r: ResultRecord) -> str:
    name = policy_name(r.policy)
    return r.method if name in ("-", r.method) else name


def top_answer(r: ResultRecord) -> tuple[str | None, float]:
    """r's most common prediction (None: unparsed) and the share of items that got it."""
    (answer, count), = Counter(it.prediction for it in r.items).most_common(1)
    return answer, count / len(r.items)


def constant_answer(r: ResultRecord) -> bool:
    return bool(r.items) and top_answer(r)[1] == 1.0


def _top_answer_cell(r: ResultRecord) -> str:
    if not r.items:
        return "-"
    answer, share = top_answer(r)
    return f"{'none' if answer is None else answer} {share:.3f}"


def _agreement(r: ResultRecord) -> float | None:
    return (r.fidelity or {}).get("agreement")


FIT_DIR = Path("results") / "latency"


def held_out_predictions(root: Path = FIT_DIR) -> dict[str, dict]:
    """Per record path in the latency fits under `root`: its residual row (measured, held_out, ...)."""
    found: dict[str, dict] = {}
    for path in sorted(root.glob("fit_*.json")):
        try:
            found.update(json.loads(path.read_text(encoding="utf-8")).get("residuals") or {})
        except (OSError, ValueError, AttributeError) as err:
            raise UserError(f"latency fit {path} is unreadable ({err!r})",
                            "re-fit with `python -m litestage_bench.studies.latency_fit --out results/latency/`")
    return found


def predicted_cell(r: ResultRecord, residuals: dict[str, dict]) -> str:
    """The held-out predicted speedup of r's record (the path its command wrote, the same measured
    speedup), or "-"."""
    words = shlex.split(r.command or "")
    out = words[words.index("--out") + 1] if "--out" in words[:-1] else None
    row = residuals.get(out) if out else None
    if not row or not row.get("held_out") or r.speedup is None or not math.isclose(row["measured"], r.speedup,
                                                                                  rel_tol=1e-9):
        return "-"
    return f"{row['held_out']:.2f}x"


def _throughput(r: ResultRecord) -> dict:
    return (r.timing or {}).get("throughput") or {}


def method_rows(records: list[ResultRecord], residuals: dict[str, dict] | None = None) -> list[list[str]]:
    """A row per method; the batch-B column only where a record of the group has one."""
    rows, batched = [], any(map(_throughput, records))
    for r in sorted(records, key=lambda r: (r.method != "dense", -(r.speedup or 0))):
        lo, hi = r.accuracy_ci95
        rows.append([_label(r), str(r.n), speedup_ci_cell(r), predicted_cell(r, residuals or {}),
                     *([throughput_cell(r)] if batched else []),
                     *decomposition_cells(r),
                     f"{r.accuracy:.3f} [{lo:.3f}, {hi:.3f}]", fmt_num(_agreement(r), ".3f"), _top_answer_cell(r),
                     flips_cell(r), fmt_p(r.mcnemar_p), str(r.timing.get("n_timed", "-")),
                     str(r.timing.get("rounds", "-"))])
    return rows


def _sequential(r: ResultRecord) -> bool:
    """Whether r's speedup predates interleaved timing (no rounds): a noisier estimate, its CI too narrow."""
    return r.method != "dense" and not r.timing.get("rounds")


def _speed(r: ResultRecord) -> str:
    return f"{r.speedup:.2f}x" + ("*" if _sequential(r) else "")


def _paired(a: ResultRecord, b: ResultRecord) -> tuple[list[bool], list[bool], float]:
    """Correctness of a and b on their shared items, and how often their answers agree."""
    theirs = {it.id: it for it in b.items}
    pairs = [(it, theirs[it.id]) for it in a.items if it.id in theirs]
    if not pairs:
        raise UserError(f"{_label(a)} and {_label(b)} share no item", "compare records run on the same --limit/--seed items")
    agree = sum(same_answer(x, y) for x, y in pairs) / len(pairs)
    return [x.correct for x, _ in pairs], [y.correct for _, y in pairs], agree


def _log_se(ci) -> float | None:
    """Standard error of log(speedup) read off its 95% CI (None without a finite one, a refused CI
    included). A t interval's half-width is t(0.975, n-1) x se, wider than 1.96 x se: read with
    1.96 it gives a larger se, so the test errs towards "no difference" when few items were timed."""
    if not ci or not all(x and x > 0 and math.isfinite(x) for x in ci):
        return None
    lo, hi = ci
    return (math.log(hi) - math.log(lo)) / (2 * 1.959964)


def item_logs(r: ResultRecord) -> dict[str, float]:
    """A record's per-item log speedups (timing.item_log_speedups; empty before records kept dense's rounds)."""
    return item_log_speedups({it.id: rounds_of(it) for it in r.items}, (r.timing or {}).get("dense_rounds") or {})


def speed_ratio_test(a: ResultRecord, b: ResultRecord, batched: bool = False) -> tuple[float, float | None, str]:
    """(a's speedup / b's, its two-sided p, the test): the paired t test on the per-item log speedups
    of the timed items both hold, where both records keep dense's rounds (timing.paired_speed_ratio);
    else the z test on the log ratio from the two CIs (p None without them). `batched`: their batch-B
    throughput speedups, z test."""
    if batched:
        ta, tb = _throughput(a), _throughput(b)
        return (*log_ratio_test(ta["throughput_speedup"], ta.get("throughput_speedup_ci95"),
                                tb["throughput_speedup"], tb.get("throughput_speedup_ci95")), "z")
    paired = paired_speed_ratio(item_logs(a), item_logs(b))
    if paired is not None:
        return a.speedup / b.speedup, paired["p"], "paired t"
    return (*log_ratio_test(a.speedup, a.speedup_ci95, b.speedup, b.speedup_ci95), "z")


def log_ratio_test(a: float, ci_a, b: float, ci_b) -> tuple[float, float | None]:
    """(a / b, two-sided p of the z test on log(a / b)) for two independent speedups, each with its
    95% CI (None without both CIs)."""
    ratio = a / b
    se_a, se_b = _log_se(ci_a), _log_se(ci_b)
    if se_a is None or se_b is None:
        return ratio, None
    if se_a + se_b == 0:  # both CIs collapsed: every item's ratio was the same, the ratio is exact
        return ratio, 1.0 if ratio == 1 else 0.0
    from scipy.stats import norm

    z = math.log(ratio) / math.hypot(se_a, se_b)
    return ratio, float(2 * norm.sf(abs(z)))


def _baseline(r: ResultRecord) -> bool:
    """A method LiteStage is compared with: neither dense nor LiteStage's own variants (litestage-spec)."""
    return r.method != "dense" and not r.method.startswith(LITESTAGE)


def _speed_row(L: ResultRecord, base: list[ResultRecord]) -> list[str]:
    """L against the most accurate baseline within +/-SPEED_MATCH of its speedup; without one, against
    the nearest in speed, named as such (the test still says whether L is the more accurate)."""
    near = [b for b in base if abs(b.speedup - L.speedup) <= SPEED_MATCH]
    best = max(near, key=lambda b: b.accuracy) if near else min(base, key=lambda b: abs(b.speedup - L.speedup))
    mine, theirs, agree = _paired(L, best)
    return [_label(L), f"speedup {_speed(L)} +/-{SPEED_MATCH}x",
            _label(best) if near else f"none (nearest {_label(best)})", _speed(best),
            "accuracy " + paired_cell(mine, theirs), fmt_p(stats.mcnemar_exact_p(mine, theirs)), f"{agree:.3f}"]


def _agreement_row(L: ResultRecord, base: list[ResultRecord]) -> list[str]:
    """L against the fastest baseline within +/-AGREEMENT_MATCH of its agreement; without one, against
    the nearest in agreement, named as such."""
    mine = _agreement(L)
    if mine is None or not base:
        return [_label(L), f"agreement {fmt_num(mine, '.3f')} +/-{AGREEMENT_MATCH}", "none", "-", "-", "-", "-"]
    near = [b for b in base if abs(_agreement(b) - mine) <= AGREEMENT_MATCH]
    best = max(near, key=lambda b: b.speedup) if near else min(base, key=lambda b: abs(_agreement(b) - mine))
    ratio, p, test = speed_ratio_test(L, best)
    return [_label(L), f"agreement {mine:.3f} +/-{AGREEMENT_MATCH}",
            _label(best) if near else f"none (nearest {_label(best)})",
            f"{_speed(best)} (agreement {_agreement(best):.3f})", f"speedup ratio {ratio:.2f}x", f"{fmt_p(p)} ({test})",
            "-"]


def _batched_agreement_row(L: ResultRecord, base: list[ResultRecord]) -> list[str]:
    """As _agreement_row, by the batch-B throughput speedups of the records re-timed at L's batch size."""
    mine, batch = _agreement(L), _throughput(L).get("batch_size")
    base = [b for b in base if _throughput(b).get("batch_size") == batch]
    matched = f"agreement {fmt_num(mine, '.3f')} +/-{AGREEMENT_MATCH}, batch {batch}"
    if mine is None or not base:
        return [_label(L), matched, "none re-timed at this batch size", "-", "-", "-", "-"]
    near = [b for b in base if abs(_agreement(b) - mine) <= AGREEMENT_MATCH]

    def speed(b: ResultRecord) -> float:
        return _throughput(b)["throughput_speedup"]
    best = max(near, key=speed) if near else min(base, key=lambda b: abs(_agreement(b) - mine))
    ratio, p, test = speed_ratio_test(L, best, batched=True)
    return [_label(L), matched, _label(best) if near else f"none (nearest {_label(best)})",
            f"{speed(best):.2f}x (agreement {_agreement(best):.3f})", f"batch-{batch} speedup ratio {ratio:.2f}x",
            f"{fmt_p(p)} ({test})", "-"]


def matched_rows(records: list[ResultRecord]) -> list[list[str]]:
    """LiteStage policies against the best baseline at matched speedup and at matched agreement (and,
    for a LiteStage record re-timed at batch B, at matched agreement by batch-B speedup)."""
    lite = [r for r in records if r.method == LITESTAGE and r.speedup]
    base = [r for r in records if _baseline(r) and r.speedup and not constant_answer(r)]
    if not base:
        return [[_label(L), "-", "none", "-", "-", "-", "-"] for L in lite]
    agreeing = [b for b in base if _agreement(b) is not None]
    rows = []
    for L in lite:
        rows += [_speed_row(L, base), _agreement_row(L, agreeing)]
        if _throughput(L).get("throughput_speedup"):
            rows.append(_batched_agreement_row(L, [b for b in agreeing if _throughput(b).get("throughput_speedup")]))
    return rows


def missing_methods(group: list[ResultRecord]) -> list[str]:
    """Registered methods the grid runs (every one but `plan`) without a record in the group."""
    from ..methods.registry import METHODS, load_plugins

    load_plugins()
    have = {r.method for r in group}
    return [m for m in sorted(METHODS) if m not in have and m != "plan"]


METHOD_COLUMNS = ["method", "n", "speedup [95% CI]", "predicted (held out)", *DECOMPOSITION_COLUMNS, "accuracy [95% CI]", "agreement",
                  "top answer", "flips -c2w/+w2c", "McNemar p", "timed", "rounds"]
MATCH_COLUMNS = ["LiteStage", "matched on", "best baseline", "its speedup", "difference (LiteStage - baseline)",
                 "p", "answer agreement"]


def headline_markdown(records: list[ResultRecord], command: str, fits: Path = FIT_DIR) -> str:
    residuals = held_out_predictions(fits)
    groups: dict[tuple[str, str], list[ResultRecord]] = defaultdict(list)
    for r in records:
        groups[(r.model, r.benchmark)].append(r)
    parts = ["# Headline comparison", "", f"Rendered with `{command}`.", ""]
    for (model, bench), group in sorted(groups.items()):
        columns = METHOD_COLUMNS[:4] + [THROUGHPUT_COLUMN] * any(map(_throughput, group)) + METHOD_COLUMNS[4:]
        parts += [f"## {model} / {bench}", "",
                  tabulate(method_rows(group, residuals), headers=columns, tablefmt="github", disable_numparse=True),
                  ""]
        if any(r.method == LITESTAGE for r in group):
            parts += ["LiteStage against the best baseline:", "",
                      tabulate(matched_rows(group), headers=MATCH_COLUMNS, tablefmt="github", disable_numparse=True), ""]
            constant = sorted(_label(r) for r in group if _baseline(r) and constant_answer(r))
            if constant:
                parts += ["Left out of the matching, as they give one answer on every item: "
                          f"{', '.join(constant)}.", ""]
            if any(map(_sequential, group)):
                parts += ["\\* timed sequentially, before interleaved rounds: machine noise can move it beyond its CI "
                          "(re-time it with `bash scripts/retime_records.sh RECORD.json`).", ""]
        missing = missing_methods(group)
        if missing:
            parts += [f"No record yet: {', '.join(missing)}.", ""]
        parts += ["Records:", *sorted({f"- `{r.command}`" for r in group if r.command}), ""]
    return "\n".join(parts)


def records_table_main(module: str, doc: str, render: Callable[[list[ResultRecord], str], str],
                       argv: list[str] | None) -> int:
    """`python -m MODULE RECORD.json|FOLDER ... [--throughput DIR] [--out FILE.md]`: the markdown of
    `render` over the records, which are named with the command line that rendered them."""
    ap = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", nargs="+", help="record files or folders of records")
    ap.add_argument("--throughput", metavar="DIR",
                    help="a folder of the records' batch-B copies (litestage-bench retime-throughput --out-dir DIR): "
                         "a record whose copy of the same file name is there is read from the copy")
    ap.add_argument("--out", help="write the markdown here too")
    args = ap.parse_args(argv)
    command = f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv)

    def records() -> list[ResultRecord]:
        folder = Path(args.throughput) if args.throughput else None
        if folder is not None and not folder.is_dir():
            raise UserError(f"--throughput {folder} is not a folder", "pass the --out-dir of retime-throughput")
        return [with_throughput(f, folder) for path in args.records for f in record_files(path)]
    return emit_markdown(lambda: render(records(), command), args.out)


def with_throughput(path: Path, folder: Path | None) -> ResultRecord:
    """The record at `path`, or its batch-B copy folder/NAME when there is one: the copy must hold the
    same items, answers and command (retime-throughput only adds `timing.throughput`)."""
    rec = load_record(path)
    copy_path = folder / path.name if folder is not None else None
    if copy_path is None or not copy_path.is_file() or copy_path.resolve() == path.resolve():
        return rec
    copy = load_record(copy_path)
    same = ([(it.id, it.prediction) for it in copy.items] == [(it.id, it.prediction) for it in rec.items]
            and copy.command == rec.command)
    if not same:
        raise UserError(f"{copy_path} is not a batch-B copy of {path}: its items, answers or command differ",
                        f"re-time the record again (litestage-bench retime-throughput {path} --out-dir {folder})")
    return copy


def main(argv: list[str] | None = None) -> int:
    return records_table_main("litestage_bench.studies.headline", __doc__, headline_markdown, argv)


if __name__ == "__main__":
    raise SystemExit(main())
