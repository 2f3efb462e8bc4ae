"""The LiteStage search's sweeps: which candidates of one stage's sweep are measured, and which of
them is kept.

- ``sweep``: every value in order until `patience` candidates in a row clearly miss (the fine sweep:
  the #skip sweeps at coarse_step 1).
- ``threshold_sweep``: the early-exit sweeps, thresholds from the highest (exits soonest) down: as
  ``sweep``, and it also ends at the first threshold that meets. On the same plan a lower threshold
  fires at the same step or later on every item (a window mean at or below it is at or below the
  higher one too; float32 is exact, so the trajectory up to the exit is the same), so it generates
  at least as many tokens in the swept stage: it cannot be faster there. What it gives up: a lower
  threshold faster only through the later stages' lengths, which its longer text changes.
- ``coarse_to_fine``: the #skip sweeps. First every `coarse`-th value (the same patience rule on the
  coarse points), then the values inside each coarse gap (two neighbouring coarse points) that may
  hold the boundary of the meeting region or a recovery after a dip: every gap except those whose
  two ends both meet or both clearly miss (a coarse point not measured, past the pass's stop or the
  list's end, counts as a clear miss; the accepted setting, values[0], as a meet), in order, inside a
  gap whose upper end does not meet stopping after `patience` clear misses in a row. When the
  fastest meeting coarse point is not the last meeting one (speed not monotone in #skip), also the
  gaps on both sides of it. What it keeps of the fine sweep: the kept candidate meets at the stated
  confidence (or is the accepted setting), and the coarse pass ends only after `patience` coarse
  points in a row clearly miss. What it gives up: a meeting value inside a gap whose ends both
  clearly miss, one inside a gap above a boundary after `patience` clear misses in a row (as the
  fine sweep would), and, with speed not monotone in #skip, a faster meeting value inside a gap
  whose ends both meet (other than beside the fastest meeting coarse point).
- the kept candidate: the fastest meeting one by measured speedup (``fastest_meeting``). With a
  latency fit, candidates are first ranked by predicted speedup and only the finalists are timed
  (``finalists``; CandidateMeter.choose).
"""
from __future__ import annotations

from typing import Any, Callable

Row = dict
Choose = Callable[[list[Row]], Row]


def meets(row: Row) -> bool:
    return row["test"]["decision"] == "meets"


def clearly_misses(row: Row) -> bool:
    return row["test"]["decision"] == "clearly misses"


def fastest_meeting(rows: list[Row]) -> Row:
    """The row with the highest measured speedup among those that meet the target; rows[0] is the
    setting accepted before the sweep (the unchanged plan), which always qualifies."""
    ok = [rows[0]] + [r for r in rows[1:] if meets(r)]
    return max(ok, key=lambda r: r["speedup"])


def ranking_speed(row: Row) -> float:
    """A row's speed for ranking inside a sweep: its measured speedup, else its predicted one."""
    for key in ("speedup", "predicted_speedup"):
        if row.get(key) is not None:
            return row[key]
    return float("-inf")


def finalists(rows: list[Row], half_width: float) -> list[Row]:
    """The qualifying rows (rows[0] and every meeting one) worth timing: the one with the highest
    predicted speedup and every one whose interval could hold a faster measured speedup. A
    prediction p with relative error up to e (|p / measured - 1| <= e) leaves the measured speedup
    within [p / (1 + e), p / (1 - e)]; a row without a prediction is always a finalist."""
    ok = [rows[0]] + [r for r in rows[1:] if meets(r)]
    predicted = [r for r in ok if r.get("predicted_speedup") is not None]
    if not predicted:
        return ok
    floor = max(r["predicted_speedup"] for r in predicted) / (1 + half_width)
    return [r for r in ok if r.get("predicted_speedup") is None or r["predicted_speedup"] / (1 - half_width) >= floor]


def sweep(measure: Callable[[Any], Row], values: list, patience: int,
          choose: Choose = fastest_meeting) -> tuple[Row, list[Row]]:
    """Measure candidates in order; a sweep ends early only after `patience` candidates in a row
    clearly miss the target by their bounds (an undecided or a meeting one resets the count), so a
    dip of a noisy, non-monotone curve does not hide later candidates. values[0] is the setting
    accepted so far. Returns the kept row (`choose`) and every measured row."""
    rows, misses = [], 0
    for value in values:
        row = measure(value)
        rows.append(row)
        misses = misses + 1 if len(rows) > 1 and clearly_misses(row) else 0
        if misses >= patience:
            break
    return choose(rows), rows


def threshold_sweep(measure: Callable[[Any], Row], values: list, patience: int,
                    choose: Choose = fastest_meeting) -> tuple[Row, list[Row]]:
    """``sweep`` over values[0] (the accepted setting) and then thresholds from the highest down,
    ending also at the first one that meets (see the module: the lower ones exit later)."""
    rows, misses = [], 0
    for value in values:
        rows.append(measure(value))
        if len(rows) > 1 and meets(rows[-1]):
            break
        misses = misses + 1 if len(rows) > 1 and clearly_misses(rows[-1]) else 0
        if misses >= patience:
            break
    return choose(rows), rows


def coarse_to_fine(measure: Callable[[Any], Row], values: list, patience: int, coarse: int,
                   choose: Choose = fastest_meeting) -> tuple[Row, list[Row]]:
    """The coarse pass, then the gaps that may hold a meeting value (see the module); rows in the
    order measured (rows[0]: values[0])."""
    if coarse <= 1:
        return sweep(measure, values, patience, choose)
    points = list(range(0, len(values), coarse))
    by_index: dict[int, Row] = {}
    misses = 0
    for i in points:
        by_index[i] = measure(values[i])
        misses = misses + 1 if i and clearly_misses(by_index[i]) else 0
        if misses >= patience:
            break

    def state(i: int) -> str:
        if i == 0:
            return "meets"  # the accepted setting always qualifies
        return by_index[i]["test"]["decision"] if i in by_index else "clearly misses"
    gaps = {lo for lo in points if {state(lo), state(lo + coarse)} not in ({"meets"}, {"clearly misses"})}
    meeting = [i for i in by_index if state(i) == "meets"]
    fastest = max(meeting, key=lambda i: ranking_speed(by_index[i]))
    if fastest != max(meeting):  # speed not monotone in #skip: the fastest one's neighbours too
        gaps |= {fastest - coarse, fastest} & set(points)
    rows = list(by_index.values())
    for lo in sorted(gaps):
        # above a boundary (the gap's upper end does not meet) today's patience rule holds inside the gap
        upward, misses = state(lo + coarse) != "meets", 0
        for i in range(lo + 1, min(lo + coarse, len(values))):
            rows.append(measure(values[i]))
            misses = misses + 1 if clearly_misses(rows[-1]) else 0
            if upward and misses >= patience:
                break
    return choose(rows), rows
