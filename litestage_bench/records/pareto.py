"""The Pareto plot of result records (`litestage-bench report --plot`): per (model, benchmark) a row of
two panels sharing the speedup axis, accuracy on the left and answer agreement with dense on the
right, each point a numbered marker keyed (outside the axes) to the rows of the report's table."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from .results import ResultRecord, atomic_write

MARKERS = "osD^vP<>pXhd"
FONT = 9  # points, the smallest text on the figure
MARKER_SIZE = 7  # points
DENSE_SIZE = 16
KEY_ROW_IN = 0.19  # inches per key entry at FONT with the legend's spacing below


@dataclass
class _Point:
    number: int  # the record's row in the report's table (sorted like results_table)
    name: str
    record: ResultRecord
    x: float
    xerr: tuple[float, float] | None  # below/above the speedup; None: no interval (hollow marker)
    agreement: tuple[float, tuple[float, float] | None] | None  # with its CI; None: no comparison

    @property
    def dense(self) -> bool:
        return self.record.method == "dense"

    @property
    def hollow(self) -> bool:
        """No speedup interval (refused, or not recorded): no bar, a hollow marker; dense is the reference."""
        return self.xerr is None and not self.dense


def _finite(*xs) -> bool:
    return all(x is not None and isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def _err(y: float, ci) -> tuple[float, float] | None:
    """(below, above) of a 95% interval around ``y``; None without a finite interval."""
    if ci is None or len(ci) != 2 or not _finite(*ci):
        return None
    return max(0.0, y - ci[0]), max(0.0, ci[1] - y)


def _speed(r: ResultRecord, throughput: bool) -> tuple[float | None, object, object]:
    """(speedup, its 95% CI, why the CI was refused): batch-1 latency's, or with `throughput` the
    batch-B throughput speedup's (`timing.throughput`; None where the record was not re-timed)."""
    if not throughput:
        return r.speedup, r.speedup_ci95, (r.timing or {}).get("speedup_ci95_refused")
    t = (r.timing or {}).get("throughput") or {}
    return t.get("throughput_speedup"), t.get("throughput_speedup_ci95"), t.get("ci95_refused")


def _points(records: list[ResultRecord], throughput: bool = False
            ) -> tuple[dict[tuple[str, str], list[_Point]], dict[tuple[str, str], list]]:
    """Plottable points per (model, benchmark), numbered by table row, and per (model, benchmark) the
    (number, name) of the records left out (no speedup, or no accuracy)."""
    from .report import _agreement, _sort_key, policy_name

    groups: dict[tuple[str, str], list[_Point]] = {}
    left_out: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for number, r in enumerate(sorted(records, key=_sort_key), 1):
        pol = policy_name(r.policy)
        name = r.method if pol in ("-", r.method) else pol if pol.startswith(r.method) else f"{r.method} ({pol})"
        dense = r.method == "dense"
        speed, ci, refused = _speed(r, throughput)
        x = speed if _finite(speed) and speed > 0 else (1.0 if dense else None)
        if x is None or not _finite(r.accuracy):
            left_out.setdefault((r.model, r.benchmark), []).append((number, name))
            continue
        xerr = None if refused else _err(x, ci)
        agree = _agreement(r)
        agreement = (1.0, None) if dense else (agree[0], agree[1]) if agree and _finite(agree[0]) else None
        groups.setdefault((r.model, r.benchmark), []).append(_Point(number, name, r, x, xerr, agreement))
    return groups, left_out


def _styles(groups: dict) -> dict[str, dict]:
    import matplotlib

    colours = matplotlib.colormaps["tab10"]
    methods = sorted({p.record.method for pts in groups.values() for p in pts} - {"dense"})
    out = {m: {"color": colours(i % 10), "marker": MARKERS[i % len(MARKERS)], "ms": MARKER_SIZE}
           for i, m in enumerate(methods)}
    out["dense"] = {"color": "black", "marker": "*", "ms": DENSE_SIZE}
    return out


def _key_handles(points: list[_Point], left_out: list[tuple[int, str]], styles: dict) -> tuple[list, list[str]]:
    from matplotlib.lines import Line2D

    handles, labels = [], []
    for p in sorted(points, key=lambda p: p.number):
        s = styles[p.record.method]
        handles.append(Line2D([], [], ls="none", marker=s["marker"], color=s["color"], ms=s["ms"] * 0.85,
                              mfc="white" if p.hollow else s["color"]))
        labels.append(f"{p.number:>2}  {p.name}")
    if any(p.hollow for p in points):
        handles.append(Line2D([], [], ls="none", marker="o", color="grey", mfc="white", ms=MARKER_SIZE * 0.85))
        labels.append("hollow: no speedup CI (refused,\nwhy in the table; or not recorded)")
    for number, name in left_out:
        handles.append(Line2D([], [], ls="none"))
        labels.append(f"{number:>2}  {name}: not plotted (no speedup)")
    return handles, labels


# tick multipliers per decade, sparsest first, then even steps for a narrow range: the first giving
# 4 ticks in view is used
_TICK_LEVELS = ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))
_TICK_STEPS = (0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)


def _speedup_ticks(vmin: float, vmax: float) -> list[float]:
    """Round speedups in [vmin, vmax] for a log axis: at least 4 where the range allows."""
    if not (vmin > 0 and vmax > vmin):
        return []
    decades = range(math.floor(math.log10(vmin)), math.floor(math.log10(vmax)) + 1)
    ticks: list[float] = []
    for level in _TICK_LEVELS:
        ticks = [t for e in decades for m in level if vmin <= (t := round(m * 10.0 ** e, 10)) <= vmax]
        if len(ticks) >= 4:
            return ticks
    for step in _TICK_STEPS:
        ticks = [round(k * step, 10) for k in range(math.ceil(vmin / step), math.floor(vmax / step) + 1)]
        if len(ticks) >= 4:
            break
    return ticks


def _speedup_limits(points: list[_Point], log: bool) -> tuple[float, float]:
    """The speedup axis' range: every point and interval and 1x, at least 1.2-fold wide (dense alone
    sits mid-axis, not in a decade either side), with a margin."""
    lo = min([1.0] + [p.x - (p.xerr[0] if p.xerr else 0.0) for p in points])
    hi = max([1.0] + [p.x + (p.xerr[1] if p.xerr else 0.0) for p in points])
    if log:
        a, b = math.log(lo), math.log(hi)
        pad = max(0.0, math.log(1.2) - (b - a)) / 2 + 0.06 * max(b - a, math.log(1.2))
        return math.exp(a - pad), math.exp(b + pad)
    pad = max(0.0, 0.2 - (hi - lo)) / 2 + 0.06 * max(hi - lo, 0.2)
    return lo - pad, hi + pad


def _log_speedup_axis(ax) -> None:
    """Speedups on a log axis (a ratio: 0.5x and 2x equally far from 1x; the interval is symmetric in
    log), ticked at plain round numbers however narrow the range."""
    from matplotlib.ticker import FuncFormatter, Locator, NullLocator

    class RoundTicks(Locator):
        def __call__(self):
            return self.tick_values(*self.axis.get_view_interval())

        def tick_values(self, vmin, vmax):
            return _speedup_ticks(min(vmin, vmax), max(vmin, vmax))

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(RoundTicks())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())


def _draw_panel(ax, points: list[_Point], styles: dict, metric: str) -> list[tuple[_Point, float, tuple | None]]:
    """Markers with their 95% CIs and the reference lines; returns the (point, y, y error) drawn."""
    drawn = []
    for p in points:
        if metric == "accuracy":
            y, yerr = p.record.accuracy, _err(p.record.accuracy, p.record.accuracy_ci95)
        elif p.agreement is None:
            continue
        else:
            y, yerr = p.agreement[0], _err(p.agreement[0], p.agreement[1])
        s = styles[p.record.method]
        bars = ax.errorbar(
            [p.x], [y], xerr=None if p.xerr is None else [[p.xerr[0]], [p.xerr[1]]],
            yerr=None if yerr is None else [[yerr[0]], [yerr[1]]], fmt=s["marker"], color=s["color"], ms=s["ms"],
            mfc="white" if p.hollow else s["color"], mec=s["color"], mew=1.3 if p.hollow else 0.8,
            ecolor=s["color"], elinewidth=0.9, capsize=2.5, zorder=2 if p.dense else 3,  # dense under a twin
            label=f"_{p.number} {p.name}")
        for bar in (*bars.lines[1], *bars.lines[2]):  # lighter bars, so markers and labels stand out
            bar.set_alpha(0.55)
        drawn.append((p, y, yerr))
    ax.axvline(1.0, color="grey", lw=1.0, ls="--", zorder=1)
    dense = next((p for p in points if p.dense), None)
    if dense is not None:
        ref = dense.record.accuracy if metric == "accuracy" else 1.0
        ax.axhline(ref, color="grey", lw=1.0, ls="--", zorder=1)
    ax.grid(True, alpha=0.25)
    ax.tick_params(labelsize=FONT)
    return drawn


# ---------------------------------------------------------------------------------------------
# Point labels: each number next to its marker, never over another label or marker


def _overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _grow(box: tuple, by: float) -> tuple:
    return box[0] - by, box[1] - by, box[2] + by, box[3] + by


def _candidates(w: float, h: float, half: float):
    """(ring, dx, dy) offsets in pixels of a label's centre: first hugging the marker (a square of
    half side ``half``) in 8 directions, then rings 6 px further out each in 16, up to ~150 px."""
    for ring in range(0, 26):
        steps = 8 if ring == 0 else 16
        for k in range(steps):
            a = math.radians(45 - 360 * k / steps)  # start upper right, clockwise
            c, s = math.cos(a), math.sin(a)
            # the distance along (c, s) at which a w x h box clears the marker's square
            reach = min((half + w / 2) / max(abs(c), 1e-9), (half + h / 2) / max(abs(s), 1e-9)) + 1
            yield ring, c * (reach + 6.0 * ring), s * (reach + 6.0 * ring)


def _place_labels(ax, drawn: list[tuple[_Point, float, tuple | None]], styles: dict, renderer) -> None:
    """Annotate each drawn point with its number, placed greedily: the nearest offset whose box stays
    in the axes and clear of every placed label and every marker, preferring one off the error bars;
    a label pushed away from its marker gets a thin leader line."""
    fig = ax.figure
    px_per_pt = fig.dpi / 72
    to_px = ax.transData.transform
    frame = ax.get_window_extent(renderer)
    markers, bars = [], []
    for p, y, yerr in drawn:
        (px, py), r = to_px((p.x, y)), styles[p.record.method]["ms"] / 2 * px_per_pt + 1
        markers.append((px - r, py - r, px + r, py + r))
        if p.xerr:
            (x0, _), (x1, _) = to_px((p.x - p.xerr[0], y)), to_px((p.x + p.xerr[1], y))
            bars.append((x0, py - 1.5, x1, py + 1.5))
        if yerr:
            (_, y0), (_, y1) = to_px((p.x, y - yerr[0])), to_px((p.x, y + yerr[1]))
            bars.append((px - 1.5, y0, px + 1.5, y1))
    placed: list[tuple] = []
    # the most crowded points first, so they get the nearest spots
    order = sorted(range(len(drawn)), key=lambda i: -sum(_overlaps(_grow(markers[i], 40), m) for m in markers))
    for i in order:
        p, y, _ = drawn[i]
        px, py = to_px((p.x, y))
        text = ax.annotate(str(p.number), (p.x, y), xytext=(0, 0), textcoords="offset points", ha="center",
                           va="center", fontsize=FONT, fontweight="bold", color="black", zorder=6,
                           bbox={"boxstyle": "round,pad=0.12", "fc": "white", "ec": "none", "alpha": 0.85},
                           annotation_clip=False, gid="pareto-label")
        ext = text.get_window_extent(renderer)
        w, h = ext.width + 4, ext.height + 3  # with the box's padding
        radius = styles[p.record.method]["ms"] / 2 * px_per_pt
        best, first = None, None
        others = [to_px((q.x, qy)) for q, qy, _ in drawn if q is not p]
        for ring, dx, dy in _candidates(w, h, radius + 1):
            if first is not None and ring > first + 5:
                break
            box = (px + dx - w / 2, py + dy - h / 2, px + dx + w / 2, py + dy + h / 2)
            if (box[0] < frame.x0 or box[2] > frame.x1 or box[1] < frame.y0 or box[3] > frame.y1
                    or any(_overlaps(box, b) for b in placed) or any(_overlaps(box, m) for m in markers)):
                continue
            first = ring if first is None else first
            # nearer rings first; then off the error bars, and nearer its own marker than any other
            own = math.hypot(dx, dy)
            ambiguous = any(math.hypot(px + dx - ox, py + dy - oy) < 1.2 * own and math.hypot(ox - px, oy - py) > 2
                            for ox, oy in others)
            cost = ring + 1.5 * sum(_overlaps(box, b) for b in bars) + 5 * ambiguous
            if best is None or cost < best[1]:
                best = (ring, cost, dx, dy, box, ambiguous)
        if best is None:  # nowhere free inside the axes: straight up, clear of the other labels
            dy = radius + h
            while any(_overlaps((px - w / 2, py + dy - h / 2, px + w / 2, py + dy + h / 2), b) for b in placed):
                dy += h
            best = (1, 0, 0.0, dy, (px - w / 2, py + dy - h / 2, px + w / 2, py + dy + h / 2), True)
        ring, _, dx, dy, box, ambiguous = best
        text.xyann = (dx / px_per_pt, dy / px_per_pt)
        placed.append(box)
        if ring > 0 or ambiguous:
            # a leader from the marker's edge to the label's nearest edge
            dist = math.hypot(dx, dy)
            ux, uy = dx / dist, dy / dist
            inner = min(w / 2 / max(abs(ux), 1e-9), h / 2 / max(abs(uy), 1e-9))
            start, end = (px + ux * radius, py + uy * radius), (px + dx - ux * inner, py + dy - uy * inner)
            (x0, y0), (x1, y1) = ax.transData.inverted().transform([start, end])
            ax.plot([x0, x1], [y0, y1], color="dimgrey", lw=0.7, zorder=5)


# ---------------------------------------------------------------------------------------------


def pareto_figure(records: list[ResultRecord], *, width: float = 12.0, dpi: int = 110, log_speedup: bool = True,
                  throughput: bool = False):
    """The figure (Agg canvas) of ``pareto_plot``; ``UserError`` when no record can be placed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups, left_out = _points(records, throughput)
    if not groups:
        raise UserError(
            "no record has both a speedup and an accuracy to plot",
            "re-time the records at batch B (`litestage-bench retime-throughput`)" if throughput else
            "run the methods together with the dense baseline so records carry a speedup",
        )
    batches = sorted({str(((r.timing or {}).get("throughput") or {}).get("batch_size")) for r in records
                      if ((r.timing or {}).get("throughput") or {}).get("batch_size")})
    speed_name = f"batch-{'/'.join(batches)} throughput speedup" if throughput else "speedup"
    styles = _styles(groups)
    keys = {g: _key_handles(pts, left_out.get(g, []), styles) for g, pts in groups.items()}
    longest = max(len(labels) for _, labels in keys.values())
    ncol = 1 if longest <= 24 else 2
    row_in = max(4.4 if len(groups) <= 2 else 3.2, math.ceil(longest / ncol) * KEY_ROW_IN + 1.2)
    fig = Figure(figsize=(width + 2.6 * (ncol - 1), row_in * len(groups) + 0.4), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 2, squeeze=False, sharex="row")
    panels = []
    for (acc_ax, agr_ax), group in zip(axes, sorted(groups)):
        pts = groups[group]
        for ax, metric in ((acc_ax, "accuracy"), (agr_ax, "agreement")):
            panels.append((ax, _draw_panel(ax, pts, styles, metric)))
            ax.set_xlabel(f"{speed_name} vs dense (x, 95% CI{'; log scale' if log_speedup else ''})",
                          fontsize=FONT + 1)
            ax.margins(y=0.08)
        if log_speedup:
            _log_speedup_axis(acc_ax)  # shared with the agreement panel
        acc_ax.set_xlim(*_speedup_limits(pts, log_speedup))
        model, bench = group
        acc_ax.set_title(f"{model} / {bench}: accuracy", fontsize=FONT + 2)
        acc_ax.set_ylabel("accuracy (95% CI)", fontsize=FONT + 1)
        agr_ax.set_title(f"{model} / {bench}: answer agreement with dense", fontsize=FONT + 2)
        agr_ax.set_ylabel("agreement with dense (95% CI)", fontsize=FONT + 1)
        handles, labels = keys[group]
        agr_ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0,
                      fontsize=FONT, ncol=ncol, labelspacing=0.3, handletextpad=0.4, columnspacing=1.0,
                      title="key (numbers = rows of the table)", title_fontsize=FONT, frameon=False)
    fig.suptitle(f"Accuracy and answer agreement vs {speed_name} over dense (up and right is better; "
                 "dense = black star, dashed lines = dense)", fontsize=FONT + 2)
    # lay the figure out once, then freeze it: the labels are placed in its final pixels
    fig.canvas.draw()
    fig.set_layout_engine("none")
    for ax, _ in panels:
        ax.set_xlim(ax.get_xlim())
        ax.set_ylim(ax.get_ylim())
    renderer = fig.canvas.get_renderer()
    for ax, drawn in panels:
        _place_labels(ax, drawn, styles, renderer)
    return fig


def pareto_plot(records: list[ResultRecord], path: str | os.PathLike, *, width: float = 12.0,
                dpi: int = 110, log_speedup: bool = True, throughput: bool = False) -> Path:
    """Accuracy and answer agreement with dense (95% CIs) against speedup (95% CI), one row of two
    panels per (model, benchmark) sharing the speedup axis (log unless ``log_speedup=False``),
    saved as PNG; ``width`` in inches. Dashed lines mark dense: speedup 1, its accuracy, agreement 1.

    Each point is a marker numbered by the record's row in the report's table, keyed beside the
    panels. A dense record without a speedup sits at 1.0; other records without one are left out
    (named in the key). A record whose speedup interval was refused has no horizontal bar and a
    hollow marker. ``throughput``: the batch-B throughput speedups (`timing.throughput`) instead;
    records not re-timed at batch B are then left out. Raises ``UserError`` when no record can be placed.
    """
    fig = pareto_figure(records, width=width, dpi=dpi, log_speedup=log_speedup, throughput=throughput)
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi), binary=True)
