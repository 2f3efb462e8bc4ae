"""The Pareto plot (`litestage-bench report --plot`): two panels sharing the speedup axis, CIs both
ways, a key outside the axes, and numbered point labels that never overlap."""
from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import matplotlib
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.text import Text

from litestage_bench.records import report
from test_results import make_record


def _record(method: str, name: str, speedup: float | None, ci=None, accuracy: float = 0.5,
            agreement: float | None = 0.8, refused: str | None = None):
    r = make_record(method, policy={"name": name}, speedup=speedup)
    return dataclasses.replace(
        r, accuracy=accuracy, accuracy_ci95=(accuracy - 0.1, accuracy + 0.1), speedup_ci95=ci,
        fidelity=None if agreement is None else {"agreement": agreement, "n": 50},
        timing={"speedup_ci95_refused": refused} if refused else {})


def _records():
    nan = math.nan
    return [
        _record("dense", "dense", None, accuracy=0.52, agreement=None),
        # three points on top of each other (the old plot wrote their names over each other)
        _record("litestage", "litestage-acc4", 1.40, (1.25, 1.57), accuracy=0.50, agreement=0.81),
        _record("litestage", "litestage-acc4-layer", 1.41, (1.22, 1.60), accuracy=0.50, agreement=0.80),
        _record("shortgpt", "shortgpt-k4", 1.39, (nan, nan), accuracy=0.49, agreement=0.79,
                refused="2 timed items, 3 needed"),
        _record("sleb", "sleb-k2", 0.90, (0.80, 1.01), accuracy=0.45, agreement=0.70),
        _record("flexidepth", "flexidepth", None, accuracy=0.40),  # no speedup: named in the key only
    ]


@pytest.fixture
def drawn(tmp_path: Path, monkeypatch):
    """(path written, the figure that was saved) for the synthetic records."""
    figures = []
    savefig = Figure.savefig

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    path = report.pareto_plot(_records(), tmp_path / "pareto.png")
    return path, figures[-1]


def _renderer(fig):
    """An Agg renderer of the saved figure (a fresh canvas: pyplot may have detached the figure's own)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _labels(fig) -> list[Text]:
    return [t for ax in fig.axes for t in ax.texts if t.get_visible() and t.get_text()]


def test_point_labels_never_overlap(drawn):
    _, fig = drawn
    renderer = _renderer(fig)
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _labels(fig)]
    assert boxes
    clashes = [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]
    assert not clashes, f"labels overlap: {clashes}"


def test_plot_panels_bars_and_key(drawn):
    path, fig = drawn
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    acc, agr = fig.axes  # accuracy and agreement, side by side, sharing the speedup axis
    assert acc.get_shared_x_axes().joined(acc, agr)
    renderer = _renderer(fig)

    def bars(ax) -> dict[str, ErrorbarContainer]:
        return {c.get_label().split(" ", 1)[1]: c for c in ax.containers if isinstance(c, ErrorbarContainer)}

    for ax in (acc, agr):
        by_name = bars(ax)
        for name in ("litestage-acc4", "litestage-acc4-layer", "sleb-k2"):
            assert by_name[name].has_xerr, name  # the speedup CI
        refused = by_name["shortgpt-k4"]
        assert not refused.has_xerr  # refused interval: no bar ...
        assert matplotlib.colors.to_rgba(refused.lines[0].get_markerfacecolor()) == (1, 1, 1, 1)  # ... hollow
        assert "flexidepth" not in by_name
        # every plotted record numbered next to its marker: dense, 3 litestage/shortgpt points, sleb
        assert sorted(t.get_text() for t in ax.texts) == sorted(["1", "3", "4", "5", "6"])
    assert all(c.has_yerr for c in bars(acc).values())  # the accuracy CIs
    assert "dense" in bars(agr)  # dense's reference point at agreement 1
    # the key sits outside both panels and names the refused interval and the record left out
    legend = agr.get_legend()
    key = [t.get_text() for t in legend.get_texts()]
    assert any("hollow" in k for k in key) and any("flexidepth" in k and "not plotted" in k for k in key)
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in (acc, agr))
    # dashed references: speedup 1 on both panels, dense's accuracy
    assert any(list(line.get_xdata()) == [1.0, 1.0] and line.get_linestyle() == "--" for line in acc.lines)
    assert any(list(line.get_ydata()) == [0.52, 0.52] and line.get_linestyle() == "--" for line in acc.lines)
    # a laptop-sized figure with no text under 9 pt
    width, height = fig.get_size_inches()
    assert 10 <= width <= 14 and 4 <= height <= 7
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    assert min(t.get_fontsize() for t in texts) >= 9


def test_crowded_points_still_get_apart_labels(tmp_path: Path, monkeypatch):
    # 30 records within a hair of each other: every number still placed, none over another, all on the figure
    figures = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), savefig(fig, *a, **k))[1])
    recs = [_record("dense", "dense", None, agreement=None)] + [
        _record(f"m{i % 7}", f"m{i % 7}-p{i}", 1.2 + 0.001 * i, (1.1, 1.3), accuracy=0.5 + 0.001 * (i % 3))
        for i in range(30)]
    report.pareto_plot(recs, tmp_path / "crowded.png")
    fig = figures[-1]
    renderer = _renderer(fig)
    boxes = [t.get_window_extent(renderer) for t in _labels(fig)]
    assert len(boxes) == 2 * 31
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    assert all(fig.bbox.x0 <= b.x0 and b.x1 <= fig.bbox.x1 and fig.bbox.y0 <= b.y0 and b.y1 <= fig.bbox.y1
               for b in boxes)


def test_the_throughput_plot_draws_batch_b_speedups_and_leaves_out_records_not_retimed():
    records = _records()
    lite, layer = records[1], records[2]
    records[1] = dataclasses.replace(lite, timing={"throughput": {"throughput_speedup": 0.8, "batch_size": 8,
                                                                  "throughput_speedup_ci95": [0.7, 0.9]}})
    records[2] = dataclasses.replace(layer, timing={"throughput": {"throughput_speedup": 1.9, "batch_size": 8,
                                                                   "throughput_speedup_ci95": [None, None],
                                                                   "ci95_refused": "2 chunks, 3 needed"}})
    from litestage_bench.records.pareto import pareto_figure
    fig = pareto_figure(records, throughput=True)
    acc = fig.axes[0]
    bars = {c.get_label().split(" ", 1)[1]: c for c in acc.containers if isinstance(c, ErrorbarContainer)}
    assert set(bars) == {"dense", "litestage-acc4", "litestage-acc4-layer"}  # the others were not re-timed
    assert bars["litestage-acc4"].lines[0].get_xdata()[0] == pytest.approx(0.8) and bars["litestage-acc4"].has_xerr
    assert not bars["litestage-acc4-layer"].has_xerr  # refused: hollow, no bar
    assert "batch-8 throughput speedup" in acc.get_xlabel()
    with pytest.raises(report.UserError, match="no record"):
        pareto_figure(records[3:], throughput=True)
