"""Predicted speedups for the LiteStage search: with a latency fit of the model x numerics x device x
CPU (records/latency_model.py), each candidate's speedup over dense is predicted from its own
accuracy pass (generated tokens and executed cost per stage and item; nothing timed), and only the
finalists of a sweep are timed (search_sweep.finalists).

The interval of a prediction is the fit's held-out error: the 95th percentile of
|predicted / measured - 1| of a record's speedup when that record was left out of the fit
(`fit.speedup_error_held_out.p95` in the fit file; the in-sample one where a fit has no held-out
error, DEFAULT_HALF_WIDTH where it has neither).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.errors import UserError
from ..engine.early_exit import ExitRule
from ..engine.plan import STAGES, SkipPlan, SkipSet, StagePlan
from ..records.items import ItemResult
from ..records.latency_model import LatencyFit, fit_file_name, load_fit, predict_items

FIT_DIR = Path("results") / "latency"
DEFAULT_HALF_WIDTH = 0.15  # the latency model's stated goal for the p95 error (docs/measuring.md)


@dataclass
class SpeedPredictor:
    """A latency fit applied to one search's candidates."""

    fit: LatencyFit
    bench: str
    source: str  # the fit file
    half_width: float  # relative error of a prediction (see the module)
    half_width_from: str

    def predict(self, sets: dict[str, SkipSet], rules: dict[str, ExitRule | None], chunks: list[dict | None],
                dense: list[ItemResult], reuse_kv: bool = True) -> float | None:
        """The predicted speedup of a candidate from its answer chunks' per-item columns
        (search_rows.item_columns) beside dense's items on the same questions; None when a chunk
        has no columns or a question no dense item."""
        by_id = {d.id: d for d in dense}
        method, base = [], []
        for cols in chunks:
            if not cols:
                return None
            for i, qid in enumerate(cols["ids"]):
                d = by_id.get(qid)
                if d is None:
                    return None
                # the options (Analyze's rows) from dense's item: the same question
                method.append(ItemResult(qid, d.answer, None, "none", False, math.nan, {},
                                         {s: cols["tokens"][s][i] for s in STAGES},
                                         executed_cost_fraction={s: cols["cost"][s][i] for s in STAGES},
                                         option_scores=d.option_scores))
                base.append(d)
        if not method:
            return None
        plan = SkipPlan({s: StagePlan.static(k) for s, k in sets.items() if k})
        exits = frozenset(s for s, r in rules.items() if r is not None)
        return predict_items(self.fit, plan, method, self.bench, dense_items=base, exits=exits, reuse_kv=reuse_kv)

    def describe(self) -> dict:
        return {"fit": self.source, "group": self.fit.group, "half_width": self.half_width,
                "half_width_from": self.half_width_from,
                "timed": "finalists: the highest predicted speedup among the meeting candidates of a sweep and "
                         "every one whose interval reaches it"}


def half_width_of(fit: LatencyFit) -> tuple[float, str]:
    """The fit's relative prediction error (see the module) and where it comes from."""
    for kind in ("speedup_error_held_out", "speedup_error_fitted"):
        p95 = (fit.fit.get(kind) or {}).get("p95")
        if isinstance(p95, (int, float)) and math.isfinite(p95) and 0 <= p95 < 1:
            return float(p95), f"{kind}.p95"
    return DEFAULT_HALF_WIDTH, "default (the fit records no error)"


def find_predictor(option: str | None, group: dict[str, str], bench: str, log: Callable[[str], None],
                   root: Path = FIT_DIR) -> SpeedPredictor | None:
    """The predictor of SearchOptions.latency_fit: None (time every candidate), "auto" (the fit of
    `group` — model, numerics, device, cpu — under `root`, if there and made with `bench`), or a
    fit file (UserError when it is missing, malformed, for another model or without `bench`)."""
    if option is None:
        return None
    if option == "auto":
        path = root / fit_file_name(group)
        if not path.is_file():
            log(f"[search] no latency fit {path}: every candidate that does not clearly miss is timed")
            return None
        fit = load_fit(path)
        if bench not in fit.prompt:
            log(f"[search] latency fit {path} has no {bench} records: every candidate is timed")
            return None
    else:
        path = Path(option)
        fit = load_fit(path)
        if fit.group.get("model") != group["model"] or bench not in fit.prompt:
            raise UserError(f"latency fit {path} is for {fit.group.get('model')} on {sorted(fit.prompt)}, "
                            f"not {group['model']} on {bench}", "pass the fit of this model (results/latency/), "
                            "or --latency-fit none")
        other = {k: (fit.group.get(k), v) for k, v in group.items() if fit.group.get(k) != v}
        if other:
            log(f"[search] latency fit {path} was made for another {', '.join(other)}: its predictions only rank")
    width, source = half_width_of(fit)
    log(f"[search] latency fit {path}: candidates ranked by predicted speedup (+-{width:.1%}), finalists timed")
    return SpeedPredictor(fit, bench, path.as_posix(), width, source)
