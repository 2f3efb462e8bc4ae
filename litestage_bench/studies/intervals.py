"""The speedup's 95% interval: recompute it for stored records, and check its coverage by simulation.

    python -m litestage_bench.studies.intervals --recompute RECORD.json ... [--dry-run]
    python -m litestage_bench.studies.intervals --simulate RECORD.json|FOLDER ... --out results/intervals/coverage.md

--recompute replaces a record's `speedup_ci95` with the t interval of `timing.t_gm_ci95`, computed
from the pairs the record stores: its items' own rounds and dense's rounds timed beside them
(`timing["dense_rounds"]`). It refuses a record whose stored pairs do not give back its stored
speedup and per-round speedups exactly, and a record made before records kept dense's rounds (there
is then no exact recomputation: re-time it). Files are rewritten atomically, nothing else in them
changes; exit status 1 when any record was left as it was for want of its pairs.

--simulate measures how often each interval covers a true speedup of 1.00 (an A/A null) when n items
are drawn from recorded per-item log ratios, centred per record so that their mean is 0: the
percentile bootstrap that records used before (`percentile_bootstrap_gm_ci95`, 2000 resamples,
seed 0 as the suite ran it) and the t interval. Three populations of per-item values, all from
stored timings (records made before `timing["dense_rounds"]` keep only the method's side of their
interleaved pairs, so neither is a record's own pairs):
- "method / dense record": per timed item, mean over rounds of log(dense seconds) in the record's
  dense record minus the same for the method: the spread of real speedups across items;
- "first / second": per timed item, log(seconds of the round one pipeline ran first / of the round
  it ran second) in one record: timing noise only, as for a method that runs dense's own computation.
- "record - record": per pair of records of one model, benchmark and CPU, per item both timed, mean
  log seconds of one minus the other's: the per-item differences of the paired test that compares two
  speedups on the same timed items (`timing.paired_speed_ratio`).
Each draw picks a record (or pair) at random, then n of its centred values with replacement.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

from tabulate import tabulate

from ..core.errors import UserError, print_error
from ..records.results import (ResultRecord, atomic_write, json_safe, load_record, record_files, record_from_dict,
                               write_json)
from ..records.timing import SPEEDUP_INTERVAL, round_pair_logs, rounds_of, speedup_of_logs, t_gm_ci95

NAN = float("nan")
DEFAULT_OUT = "results/intervals/coverage.md"
SIZES = (3, 5, 10, 20)
MIN_POPULATION = 5  # a record with fewer timed items says little about the shape of the spread


def percentile_bootstrap_gm_ci95(item_means: list[float], seed: int = 0,
                                 n_resamples: int = 2000) -> tuple[float, float]:
    """The interval records carried before the t interval (kept to compare coverage): a seeded
    percentile bootstrap over items of exp(mean log ratio); (nan, nan) below 2 items. The same
    resamples and percentiles as scipy.stats.bootstrap(method="percentile", rng=default_rng(seed)),
    written out in numpy because the simulation calls it thousands of times."""
    import numpy as np

    if len(item_means) < 2:
        return NAN, NAN
    if len(set(item_means)) == 1:
        point = math.exp(item_means[0])
        return point, point
    x = np.asarray(item_means, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(x), (n_resamples, len(x)))
    low, high = np.percentile(x[idx].mean(axis=-1), [2.5, 97.5])
    return math.exp(float(low)), math.exp(float(high))


# --------------------------------------------------------------------------------------------
# recomputing stored records


def recompute(data: dict, source: str = "record") -> tuple[dict | None, str]:
    """(the record's JSON with the t interval, what changed) or (None, why it cannot be recomputed)."""
    rec = record_from_dict(data, source)
    stored = rec.timing.get("dense_rounds")
    if rec.speedup_ci95 is None or rec.speedup is None:
        return None, "no paired speedup (dense, or a speedup given from outside)"
    if not stored:
        return None, ("dense's interleaved rounds are not stored (made before records kept them): "
                      "no exact recomputation; re-time it (its own `run` command with --answers-from itself)")
    method_rounds = {it.id: rounds_of(it) for it in rec.items}
    pairs = [list(zip(dense, method_rounds.get(item_id) or [])) for item_id, dense in stored.items()]
    paired = speedup_of_logs(round_pair_logs(pairs))
    stored_rounds = rec.timing.get("speedup_rounds") or []
    same = (paired["n_items"] == len(stored) and _same(paired["speedup"], rec.speedup)
            and len(paired["speedup_rounds"]) == len(stored_rounds)
            and all(map(_same, paired["speedup_rounds"], stored_rounds)))
    if not same:
        return None, f"its stored pairs give {paired['speedup']:.6f}x, not its stored {rec.speedup:.6f}x"
    out = json.loads(json.dumps(data))
    out["speedup_ci95"] = json_safe(list(paired["ci95"]))
    timing = out["timing"]
    timing["speedup_interval"] = SPEEDUP_INTERVAL
    timing.pop("speedup_ci95_refused", None)
    if paired["ci95_refused"]:
        timing["speedup_ci95_refused"] = paired["ci95_refused"]
    before, after = _cell(rec.speedup, rec.speedup_ci95, None), _cell(rec.speedup, paired["ci95"], paired["ci95_refused"])
    return out, f"{before} -> {after}"


def _same(a: float | None, b: float | None) -> bool:
    """Equal up to the last bits that a JSON round trip may change (None and nan: not measured)."""
    finite = [x is not None and math.isfinite(x) for x in (a, b)]
    return not any(finite) or (all(finite) and math.isclose(a, b, rel_tol=1e-12))


def _cell(point: float, ci, refused: str | None) -> str:
    if refused:
        return f"{point:.3f}x [no CI: {refused}]"
    lo, hi = (NAN, NAN) if ci is None else ci
    return f"{point:.3f}x [{lo:.3f}, {hi:.3f}]"




def recompute_files(paths: list[str], dry_run: bool = False) -> int:
    left = 0
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read record {path}: {exc}", "pass result record files (*.json)") from None
        out, what = recompute(data, path)
        if out is None:
            left += 1
            print(f"{path}: left as it was: {what}")
            continue
        if not dry_run:
            write_json(path, out)
        print(f"{path}: {what}{' (dry run: not written)' if dry_run else ''}")
    return 1 if left else 0


# --------------------------------------------------------------------------------------------
# coverage by simulation


def _log_seconds(entry: dict) -> float | None:
    total = sum(entry["stage_s"].values())
    return math.log(total) if total > 0 and math.isfinite(total) else None


def _mean_log_seconds(rounds: list[dict]) -> float | None:
    logs = [x for x in map(_log_seconds, rounds) if x is not None]
    return statistics.fmean(logs) if logs else None


def method_vs_dense(rec: ResultRecord, dense: ResultRecord) -> list[float]:
    """Per item timed on both sides, mean log dense seconds (dense record) - mean log method seconds."""
    theirs = {it.id: _mean_log_seconds(rounds_of(it)) for it in dense.items}
    out = []
    for it in rec.items:
        mine, d = _mean_log_seconds(rounds_of(it)), theirs.get(it.id)
        if mine is not None and d is not None:
            out.append(d - mine)
    return out


def round_to_round(rec: ResultRecord) -> list[float]:
    """Per item timed in 2 or more rounds, log(seconds of a round the pipeline ran first / of one it
    ran second): oriented by order, so that a cost of going first is one shift, which centring removes."""
    out = []
    for it in rec.items:
        rounds = it.timing_rounds[:2]
        if len(rounds) < 2:
            continue
        if rounds[1].get("first") and not rounds[0].get("first"):
            rounds = rounds[::-1]
        a, b = _log_seconds(rounds[0]), _log_seconds(rounds[1])
        if a is not None and b is not None:
            out.append(a - b)
    return out


def record_pairs(records: list[ResultRecord]) -> list[list[float]]:
    """Per pair of records of one model, benchmark and CPU, per item both timed, mean log seconds of
    one minus the other's (rounds averaged per item): the per-item differences the headline's paired
    test takes (`timing.paired_speed_ratio`), without each record's own dense, which cancels when two
    records were timed against one dense and adds a second run's noise when not."""
    groups: dict[tuple, list[ResultRecord]] = {}
    for rec in records:
        if rec.method != "dense":
            groups.setdefault((rec.model, rec.benchmark, (rec.machine or {}).get("cpu")), []).append(rec)
    return [method_vs_dense(a, b) for group in groups.values()
            for i, a in enumerate(group) for b in group[i + 1:]]


def populations(records: list[tuple[str, ResultRecord]]) -> dict[str, list[list[float]]]:
    """{population: [one record's (or pair's) centred per-item values]} over the records timed in rounds."""
    dense_cache: dict[str, ResultRecord | None] = {}
    out: dict[str, list[list[float]]] = {"method / dense record": [], "first / second": [],
                                         "record - record": record_pairs([r for _, r in records
                                                                          if r.timing.get("rounds")])}
    for _, rec in records:
        if not rec.timing.get("rounds"):
            continue
        out["first / second"].append(round_to_round(rec))
        dense_path = rec.extra.get("dense_record")
        if rec.method == "dense" or not dense_path:
            continue
        if dense_path not in dense_cache:
            dense_cache[dense_path] = load_record(dense_path) if Path(dense_path).is_file() else None
        if dense_cache[dense_path] is not None:
            out["method / dense record"].append(method_vs_dense(rec, dense_cache[dense_path]))
    return {name: [[x - statistics.fmean(v) for x in v] for v in values if len(v) >= MIN_POPULATION]
            for name, values in out.items()}


def coverage(values: list[list[float]], n: int, draws: int, seed: int) -> dict:
    """Coverage of 1.00 by each interval over `draws` samples of n items (see the module's doc)."""
    import numpy as np

    rng = np.random.default_rng([seed, n])
    hits = {"bootstrap": 0, "t": 0}
    given_t, widths = 0, {"bootstrap": [], "t": []}
    for _ in range(draws):
        pop = values[rng.integers(len(values))]
        sample = [float(x) for x in rng.choice(pop, n, replace=True)]
        lo, hi = percentile_bootstrap_gm_ci95(sample, seed=0)
        hits["bootstrap"] += lo <= 1.0 <= hi
        widths["bootstrap"].append(hi / lo)
        (lo, hi), refused = t_gm_ci95(sample)
        if refused is None:
            given_t += 1
            hits["t"] += lo <= 1.0 <= hi
            widths["t"].append(hi / lo)
    return {"n": n, "draws": draws, "bootstrap": hits["bootstrap"] / draws,
            "t": hits["t"] / given_t if given_t else NAN, "t_refused": 1 - given_t / draws,
            "width_bootstrap": statistics.median(widths["bootstrap"]),
            "width_t": statistics.median(widths["t"]) if widths["t"] else NAN}


COLUMNS = ["values", "records", "items", "n", "bootstrap covers 1.00", "t covers 1.00", "t refused",
           "median high/low, bootstrap", "median high/low, t"]


def coverage_markdown(records: list[tuple[str, ResultRecord]], draws: int, seed: int, command: str) -> str:
    rows = []
    for name, values in populations(records).items():
        if not values:
            continue
        for n in SIZES:
            c = coverage(values, n, draws, seed)
            rows.append([name, len(values), sum(map(len, values)), n, f"{c['bootstrap']:.3f}", f"{c['t']:.3f}",
                         f"{c['t_refused']:.3f}", f"{c['width_bootstrap']:.3f}", f"{c['width_t']:.3f}"])
    se = 0.5 / math.sqrt(draws)
    return "\n".join([
        "# Coverage of the speedup's 95% interval (A/A null)", "",
        f"Made with `{command}` on {datetime.now(timezone.utc).date().isoformat()}.", "",
        "Per-item log ratios of the records below, centred per record (true speedup 1.00); each draw takes "
        "a record at random and n of its items with replacement. \"bootstrap\": the seeded percentile "
        "bootstrap records carried before (2000 resamples, seed 0); \"t\": the Student t interval on the "
        "per-item mean log ratios that records carry now (`timing.t_gm_ci95`), its coverage over the draws "
        "where it was given (\"t refused\": the share where every drawn value was the same). "
        f"{draws} draws per row: a coverage is within about {2 * se:.3f} of its true value (2 standard errors at 0.5).", "",
        "- method / dense record: per timed item, mean log dense seconds in the record's dense record minus "
        "mean log method seconds (rounds averaged per item); the spread of real speedups across items. "
        "Records made before `timing[\"dense_rounds\"]` keep only the method's side of their interleaved pairs, "
        "so dense's side comes from its own record.",
        "- first / second: per timed item, log of one pipeline's seconds in the round it ran first over its "
        "seconds in the round it ran second, in the same record; timing noise alone, as for a method that runs "
        "dense's own computation.",
        "- record - record: per pair of records of one model, benchmark and CPU, per item both timed, mean log "
        "seconds of one minus the other's; the values of the paired t test that compares two speedups on the "
        "same timed items (`timing.paired_speed_ratio`; the headline's matched agreement), each record's own "
        "dense left out (exact for two records timed against one dense). \"records\" counts the pairs.", "",
        tabulate(rows, headers=COLUMNS, tablefmt="github", disable_numparse=True), "",
        "Records: " + ", ".join(f"`{p}`" for p, r in records if r.timing.get("rounds")) + ".", ""])


# --------------------------------------------------------------------------------------------
# command line


def _records(paths: list[str]) -> list[tuple[str, ResultRecord]]:
    """(path, record) of each file named and of each record in each folder named (record_files)."""
    files = [f for p in paths for f in record_files(p)]
    return [(str(f), load_record(f)) for f in files]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m litestage_bench.studies.intervals", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--recompute", nargs="+", metavar="RECORD", help="records whose speedup_ci95 to recompute")
    mode.add_argument("--simulate", nargs="+", metavar="RECORD|FOLDER", help="records to draw per-item log ratios from")
    parser.add_argument("--dry-run", action="store_true", help="with --recompute: print what would change, write nothing")
    parser.add_argument("--draws", type=int, default=2000, help="with --simulate: samples per row (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"with --simulate: the markdown to write (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    try:
        if args.recompute:
            return recompute_files(args.recompute, args.dry_run)
        command = shlex.join(["python", "-m", "litestage_bench.studies.intervals", *argv])
        text = coverage_markdown(_records(args.simulate), args.draws, args.seed, command)
        atomic_write(args.out, lambda fh: fh.write(text))
        print(text)
        return 0
    except UserError as err:
        print_error(err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
