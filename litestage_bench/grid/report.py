"""The grid's tables and plots: per model x benchmark a comparative table (a row per method point)
and a per-stage breakdown, printed and written as markdown and JSON with the machine and
versions, and a Pareto PNG (accuracy and agreement vs speedup, a series per method)."""
from __future__ import annotations

import json
import math
import platform
from collections import defaultdict
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from tabulate import tabulate

from ..engine.plan import STAGES
from ..records.report import (DECOMPOSITION_COLUMNS, THROUGHPUT_COLUMN, decomposition_cells, drafting_cell, fmt_num,
                              fmt_p, fmt_stages, noise_floor_notes, speedup_ci_cell, throughput_cell)
from ..records.results import ResultRecord, atomic_write, machine_info, write_record, write_text_atomic
from .cases import slug
from .store import CaseResult, GridStore

GRID_SCHEMA = 1
COLUMNS = ["method", "point", "stages", "n", "accuracy [95% CI]", "d acc vs dense", "agreement",
           "flips -c2w/+w2c", "McNemar p", "speedup [95% CI]", *DECOMPOSITION_COLUMNS, THROUGHPUT_COLUMN, "s/question",
           "stage s R/A/S", "tokens R/A/S", "cost frac R/A/S", "accuracy from", "policy", "lossless drafting"]
STAGE_COLUMNS = ["method", "point", "stages", "stage", "s/question", "share of question", "speedup vs dense",
                 *DECOMPOSITION_COLUMNS, "tokens", "token ratio vs dense", "cost frac", "output = dense", "drafting"]
# Columns that hold measured times: the only ones in which a rerun or an `-n N` run may differ.
TIMING_COLUMNS = {"speedup [95% CI]", "s/question", "stage s R/A/S", "share of question", "speedup vs dense",
                  *DECOMPOSITION_COLUMNS[1:], THROUGHPUT_COLUMN}


def _ci(point, ci, fmt: str, suffix: str = "") -> str:
    p = fmt_num(point, fmt)
    if p == "-" or not ci:
        return p + (suffix if p != "-" else "")
    return f"{p}{suffix} [{fmt_num(ci[0], fmt)}, {fmt_num(ci[1], fmt)}]"


def _policy_cell(res: CaseResult) -> str:
    return (res.search or {}).get("source", "-")


def main_row(res: CaseResult, rec: ResultRecord, dense: ResultRecord | None) -> list[str]:
    fid = rec.fidelity or {}
    d_acc = rec.accuracy - dense.accuracy if dense is not None and rec is not dense and dense.n == rec.n else None
    flips = f"-{fid.get('correct_to_wrong', 0)}/+{fid.get('wrong_to_correct', 0)}" if fid else "-"
    return [rec.method, res.case.point, res.case.stage_label, str(rec.n),
            _ci(rec.accuracy, rec.accuracy_ci95, ".3f"), fmt_num(d_acc, "+.3f"), fmt_num(fid.get("agreement"), ".3f"),
            flips, fmt_p(rec.mcnemar_p), speedup_ci_cell(rec),
            *decomposition_cells(rec, "total"), throughput_cell(rec), fmt_num(rec.latency_s, ".3f"),
            fmt_stages(rec.stage_latency_s, ".3f"), fmt_stages(rec.tokens, ".1f"),
            fmt_stages(rec.executed_cost_fraction, ".2f"), "cache" if res.accuracy_cached else "computed",
            _policy_cell(res), drafting_cell(rec)]


def stage_rows(res: CaseResult, rec: ResultRecord, dense: ResultRecord | None) -> list[list[str]]:
    fid = rec.fidelity or {}
    total = sum(v for v in rec.stage_latency_s.values() if v is not None and math.isfinite(v))
    parts = rec.speedup_decomposition or {}
    rows = []
    for s in STAGES:
        lat = rec.stage_latency_s.get(s)
        rows.append([rec.method, res.case.point, res.case.stage_label, s, fmt_num(lat, ".3f"),
                     fmt_num(lat / total if total and lat is not None else None, ".0%"),
                     fmt_num((parts.get(s) or {}).get("speedup"), ".2f"), *decomposition_cells(rec, s),
                     fmt_num(rec.tokens.get(s), ".1f"), fmt_num((fid.get("token_ratio") or {}).get(s), ".2f"),
                     fmt_num(rec.executed_cost_fraction.get(s), ".2f"),
                     fmt_num((fid.get("stage_exact_match") or {}).get(s), ".2f"), drafting_cell(rec, s)])
    return rows


def groups(pairs: list[tuple[CaseResult, ResultRecord]]) -> dict[tuple[str, str], list[tuple[CaseResult, ResultRecord]]]:
    out: dict[tuple[str, str], list] = defaultdict(list)
    for res, rec in pairs:
        out[(res.case.model, res.case.bench)].append((res, rec))
    return dict(out)


def _dense(group: list[tuple[CaseResult, ResultRecord]]) -> ResultRecord | None:
    return next((rec for res, rec in group if res.case.method == "dense"), None)


def pareto_plot(model: str, bench: str, group: list[tuple[CaseResult, ResultRecord]], path: Path) -> Path | None:
    """The group's Pareto plot, drawn as every record table's is (records/pareto.py: accuracy and
    agreement panels, both CIs, numbered points keyed to the table); None when no case has a speedup."""
    from ..records.pareto import pareto_plot as draw_records
    records = [rec for _, rec in group if rec.speedup is not None and math.isfinite(rec.speedup)]
    return draw_records(records, path) if records else None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("litestage-bench", "torch", "transformers", "pytest", "pytest-benchmark", "pytest-xdist", "ray"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def render(store: GridStore) -> dict:
    """Everything the grid writes, as data: per group its rows, per-stage rows and notes."""
    out = []
    for (model, bench), group in groups(store.records()).items():
        dense = _dense(group)
        out.append({"model": model, "bench": bench, "columns": COLUMNS,
                    "rows": [main_row(res, rec, dense) for res, rec in group],
                    "stage_columns": STAGE_COLUMNS,
                    "stage_rows": [row for res, rec in group for row in stage_rows(res, rec, dense)],
                    "noise_floor": noise_floor_notes([rec for _, rec in group]),
                    "_pairs": group})
    return {"groups": out}


def terminal_text(rendered: dict) -> str:
    parts = []
    for g in rendered["groups"]:
        parts += [f"== {g['model']} / {g['bench']}", _md_table(g["columns"], g["rows"]), "",
                  "per stage:", _md_table(g["stage_columns"], g["stage_rows"]), ""]
    return "\n".join(parts)


def backend_line(backend: dict) -> str:
    """One line of table.md on where the grid ran."""
    if backend.get("name") != "ray":
        return f"Backend: {backend.get('name', 'serial')}."
    nodes = "; ".join(f"{n['ip']} {', '.join(f'{k} {v:g}' for k, v in sorted(n['resources'].items()) if k in ('CPU', 'GPU'))}"
                      for n in backend["nodes"])
    return (f"Backend: Ray {backend['ray']} at `{backend['address']}`, {len(backend['nodes'])} node(s) ({nodes}); a task "
            f"per model x benchmark, up to {backend['retries']} retries; accuracy cache {backend['accuracy_cache']}.")


def write_grid(store: GridStore, folder: str | Path, command: str, selection: dict,
               wall_seconds: float | None = None, backend: dict | None = None) -> tuple[str, Path]:
    """Write records/, table.md, grid.json and pareto_*.png under `folder`; returns (terminal text, folder).
    `backend`: where it ran (serial, xdist, or the Ray cluster's nodes and tasks)."""
    backend = backend or {"name": "serial"}
    folder = Path(folder)
    # the same JSON round trip for serial and merged stores, so both give identical records
    normal = GridStore()
    normal.merge(store.dumps())
    rendered = render(normal)
    machine, created = machine_info(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    workers = {r.worker: {"threads": r.threads, "device": r.device} for r in normal.sorted()}
    cases, md = [], [
        "# Benchmark grid", "",
        f"Produced by `{command}` ({created}).", "",
        f"Machine: {machine.get('cpu')} ({machine.get('cpu_count')} cores), GPU {machine.get('gpu') or 'none'}; "
        + ", ".join(f"{k} {v}" for k, v in versions().items() if v) + "; workers: "
        + ", ".join(f"{w} {v['threads']} thread(s) on {v['device']}" for w, v in sorted(workers.items())) + ".", "",
        backend_line(backend), "",
        *([f"Wall time of the session: {wall_seconds / 60:.1f} min with {len(workers)} worker(s); accuracy read "
           f"from the cache for {sum(r.accuracy_cached for r in normal.sorted())} of {len(normal.sorted())} cases.",
           ""] if wall_seconds is not None else []),
        "Accuracy: all n items, batched (`accuracy from`: `cache` = read from the accuracy cache, only re-timed). "
        "Latency: median per question at batch 1 on the seeded timed items, after a warm-up (on a CPU one "
        "question per pipeline in a worker's first case, later only for a plan still cold; on CUDA a pass over "
        "all timed items per case). "
        "Speedup: dense and the method timed back to back on each timed item, R rounds with the order "
        "alternating; the geometric mean of the paired per-item ratios, with a 95% Student t interval on the "
        "per-item mean log ratios (none below 3 timed items; litestage_bench/records/timing.py). It splits "
        "exactly into `fewer tokens` (dense's generated tokens / the method's) x `cheaper tokens` (seconds per "
        "generated token, dense's / the method's); `prefill/decode s/tok` give seconds per processed token of "
        "each phase apart (dense's / the method's). "
        "Flips and agreement compare answers with dense's on the same items.", ""]
    for g in rendered["groups"]:
        png = f"pareto_{slug(g['model'])}_{g['bench']}.png"
        written = pareto_plot(g["model"], g["bench"], g["_pairs"], folder / png)
        g["pareto"] = png if written else None
        md += [f"## {g['model']} / {g['bench']}", "", _md_table(g["columns"], g["rows"]), "",
               "Per stage:", "", _md_table(g["stage_columns"], g["stage_rows"]), ""]
        md += [f"- {n}" for n in g["noise_floor"]] + ([""] if g["noise_floor"] else [])
        md += [f"![accuracy and agreement vs speedup]({png})", ""] if written else []
        for res, rec in g.pop("_pairs"):
            path = write_record(folder / "records" / f"{res.case.id}.json", rec)
            cases.append({"case": res.case.id, **res.case.to_dict(), "record": str(path.relative_to(folder)),
                          "accuracy_cached": res.accuracy_cached, "accuracy_seconds": res.accuracy_seconds,
                          "timed_seconds": res.timing.get("seconds"), "search": res.search,
                          "worker": res.worker, "threads": res.threads, "device": res.device})
    searches = {c["search"]["path"]: c["search"] for c in cases if (c["search"] or {}).get("source") == "searched"}
    if searches:
        md += ["## Policy searches (cost apart from the timings)", "",
               _md_table(["policy", "seconds", "stage runs", "command"],
                         [[p, fmt_num(s.get("seconds"), ".1f"), str(s.get("stage_runs")), f"`{s.get('command')}`"]
                          for p, s in sorted(searches.items())]), ""]
    doc = {"schema_version": GRID_SCHEMA, "created": created, "command": command, "machine": machine,
           "versions": versions(), "selection": selection, "backend": backend, "workers": workers, "wall_seconds": wall_seconds,
           "timing_columns": sorted(TIMING_COLUMNS), "groups": rendered["groups"], "cases": cases,
           "searches": list(searches.values())}
    previous = previous_outputs(folder)
    write_text_atomic(folder / "table.md", "\n".join(md))
    atomic_write(folder / "grid.json", lambda fh: json.dump(doc, fh, indent=1, default=str))
    written = {folder / c["record"] for c in cases} | {folder / g["pareto"] for g in rendered["groups"] if g["pareto"]}
    for stale in previous - written:  # the folder describes this run alone
        stale.unlink(missing_ok=True)
    return terminal_text({"groups": rendered["groups"]}), folder


def previous_outputs(folder: Path) -> set[Path]:
    """The records and plots an earlier run wrote into `folder` (from its grid.json), which the new
    table would no longer describe."""
    try:
        doc = json.loads((folder / "grid.json").read_text())
        names = [c["record"] for c in doc["cases"]] + [g["pareto"] for g in doc["groups"] if g.get("pareto")]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    inside = folder.resolve()
    return {folder / n for n in names if isinstance(n, str) and inside in (folder / n).resolve().parents}


def without_timings(group: dict) -> dict:
    """A group's rows without the timing columns (what `-n N` and serial runs must agree on)."""
    keep = [i for i, c in enumerate(group["columns"]) if c not in TIMING_COLUMNS]
    keep_st = [i for i, c in enumerate(group["stage_columns"]) if c not in TIMING_COLUMNS]
    return {"model": group["model"], "bench": group["bench"],
            "rows": [[r[i] for i in keep] for r in group["rows"]],
            "stage_rows": [[r[i] for i in keep_st] for r in group["stage_rows"]]}
