"""A latency model of skip plans: a question's seconds from counts that need no clock (tokens,
executed sub-layers, early exit, drafting; latency_features.py), with a few costs fitted per model x
numerics x device x CPU from interleaved-timed records, and the speedup over dense it predicts.

Fit (records/latency_solve.py). Least squares on relative errors: every timed item's stage seconds
of the method, prefill and the rest apart, and (as committed records keep no per-item dense
seconds) dense's geometric-mean seconds per stage, per stage's prefill and per question over each
record's timed items; each record with its own time scale (the machine's state when it was timed).

Prediction. A record's speedup = geometric mean over its timed items of predicted dense seconds /
predicted method seconds, as records/timing.py measures it. `predict_speedup` takes what an
accuracy pass records (tokens per stage on both sides, the plan) and can rank candidates untimed.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UserError
from ..engine.plan import DENSE, SkipPlan
from .items import ItemResult
from .latency_data import RecordData, dense_tokens_of, item_counts
from .latency_features import FEATURES, ItemCounts, item_rows, plan_of_policy, reuse_flags
from .latency_solve import TINY, Block, block_of, solve

FIT_KIND = "litestage-bench latency fit"
FIT_VERSION = 1


@dataclass
class LatencyFit:
    """Fitted costs (seconds per unit of each feature) of one model x numerics x device x CPU."""

    group: dict[str, str]
    num_layers: int
    attn_share: float | None
    params: dict[str, float]
    prompt: dict[str, dict]  # per benchmark: prompt-token constants (latency_data.prompt_constants)
    fit: dict = field(default_factory=dict)  # residual summary
    records: list[str] = field(default_factory=list)
    residuals: dict[str, dict] = field(default_factory=dict)  # per record: measured / fitted / held-out speedup

    @property
    def theta(self) -> np.ndarray:
        return np.array([self.params.get(name, 0.0) for name in FEATURES])

    def to_dict(self) -> dict:
        return {"kind": FIT_KIND, "version": FIT_VERSION, **asdict(self)}


def _consts(fit: LatencyFit, bench: str) -> dict:
    if bench not in fit.prompt:
        raise UserError(f"the latency fit of {fit.group.get('model')} has no prompt constants for {bench!r}",
                        f"use one of {sorted(fit.prompt)}, or fit from records of {bench}")
    return fit.prompt[bench]


def side_rows(fit: LatencyFit, plan: SkipPlan, exits: frozenset[str], counts: ItemCounts, bench: str,
              reuse_kv: bool = True) -> np.ndarray:
    """Feature rows [stage, part, feature] of one side of one question under `fit`'s model facts."""
    return item_rows(plan, exits, counts, fit.num_layers, _consts(fit, bench), fit.attn_share, reuse_kv)


def seconds(theta: np.ndarray, rows: np.ndarray) -> float:
    """A question's predicted seconds from its feature rows [stage, part, feature]."""
    return max(float(rows.sum(axis=(0, 1)) @ theta), TINY)


def predict_speedup(fit: LatencyFit, method_items: list[ItemCounts], dense_items: list[ItemCounts],
                    plan: SkipPlan | dict, bench: str, exits: frozenset[str] = frozenset(),
                    reuse_kv: bool = True) -> float:
    """Predicted speedup over dense on the same questions (same order): the geometric mean of the
    per-question ratios. `plan`: a SkipPlan (with `exits`, the stages under an early-exit rule) or a
    record's policy dict. Items without prefill_tokens get them from the fit's prompt constants."""
    if isinstance(plan, dict):
        plan, exits = plan_of_policy(plan)
    if len(method_items) != len(dense_items) or not method_items:
        raise UserError(f"predict_speedup needs the same questions on both sides ({len(method_items)} method, "
                        f"{len(dense_items)} dense)", "pass dense's counts for every method item, in order")
    theta = fit.theta
    logs = [math.log(seconds(theta, side_rows(fit, DENSE, frozenset(), d, bench, reuse_kv)))
            - math.log(seconds(theta, side_rows(fit, plan, exits, m, bench, reuse_kv)))
            for m, d in zip(method_items, dense_items)]
    return math.exp(sum(logs) / len(logs))


def predict_items(fit: LatencyFit, plan: SkipPlan | dict, method_items: list[ItemResult], bench: str,
                  dense_items: list[ItemResult] | None = None, exits: frozenset[str] = frozenset(),
                  reuse_kv: bool = True) -> float:
    """`predict_speedup` from result items, e.g. an accuracy pass (nothing timed): the method's items
    and dense's on the same questions (or, without `dense_items`, dense's tokens from each method
    item's fidelity)."""
    if isinstance(plan, dict):
        plan, exits = plan_of_policy(plan)
    reuse, consts = reuse_flags(plan, reuse_kv), _consts(fit, bench)
    if dense_items is not None and len(dense_items) != len(method_items):
        raise UserError(f"predict_items got {len(method_items)} method items and {len(dense_items)} dense items",
                        "pass dense's results on the same questions, in the same order")
    pairs = []
    for i, it in enumerate(method_items):
        tokens = dense_items[i].tokens if dense_items is not None else dense_tokens_of(it)
        if tokens is None:
            raise UserError(f"item {it.id} carries no dense tokens (fidelity)", "pass dense_items (dense's results)")
        pairs.append(item_counts(it, tokens, reuse, consts))
    return predict_speedup(fit, [m for m, _ in pairs], [d for _, d in pairs], plan, bench, exits, reuse_kv)


def predict_record(fit: LatencyFit, data: RecordData) -> float:
    """The speedup the fit predicts for a record's timed items."""
    rec = data.record
    return predict_speedup(fit, [t.method for t in data.items], [t.dense for t in data.items], rec.policy,
                           rec.benchmark, reuse_kv=rec.config.get("reuse_kv", True))


# --------------------------------------------------------------------------------------------
# fitting (records/latency_solve.py)


def blocks_for(fit: LatencyFit, data: list[RecordData]) -> list[Block]:
    """Each record's feature rows under `fit`'s model facts and prompt constants (computed once)."""
    return [block_of(rd, lambda *args: side_rows(fit, *args)) for rd in data]


def fit_blocks(base: LatencyFit, blocks: list[Block]) -> LatencyFit:
    """`base` (model facts, prompt constants) with costs fitted to `blocks`; each record's fitted
    log time scale is in `residuals[path]["log_time_scale"]`."""
    theta, scales = solve(blocks)
    fit = LatencyFit(dict(base.group), base.num_layers, base.attn_share, dict(zip(FEATURES, map(float, theta))),
                     base.prompt)
    fit.residuals = {b.path: {"log_time_scale": float(s)} for b, s in zip(blocks, scales)}
    return fit


# --------------------------------------------------------------------------------------------
# files


def fit_file_name(group: dict) -> str:
    """A fit's file name from its group: fit_MODEL_NUMERICS_DEVICE_CPU.json (lower case, runs of other
    characters than letters, digits and dots as one '-'), as `latency_fit` writes it and a search finds it."""
    def slug(text: str) -> str:
        return re.sub(r"[^a-z0-9.]+", "-", str(text).lower()).strip("-")
    return "fit_" + "_".join(slug(group[k]) for k in ("model", "numerics", "device", "cpu")) + ".json"


def _fix(path: str) -> str:
    return "pass a fit written by `python -m litestage_bench.studies.latency_fit --out DIR` (results/latency/)"


def load_fit(path: str | Path) -> LatencyFit:
    """A fit written by `latency_fit`; ``UserError`` (one line) for a missing or malformed file."""
    path = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"latency fit {path} does not exist", _fix(path)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"latency fit {path} is not readable JSON ({exc})", _fix(path)) from None
    return fit_from_dict(data, path)


def fit_from_dict(data: Any, source: str = "latency fit") -> LatencyFit:
    def bad(what: str) -> UserError:
        return UserError(f"{source} is malformed: {what}", _fix(source))

    if not isinstance(data, dict) or data.get("kind") != FIT_KIND:
        raise bad(f"not a {FIT_KIND!r} object")
    if data.get("version") != FIT_VERSION:
        raise bad(f"version {data.get('version')!r} is not {FIT_VERSION}")
    params = data.get("params")
    if not isinstance(params, dict) or set(params) != set(FEATURES):
        raise bad(f"'params' must give exactly {len(FEATURES)} costs ({', '.join(FEATURES)})")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in params.values()):
        raise bad("every value in 'params' must be a finite number")
    layers = data.get("num_layers")
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        raise bad("'num_layers' must be a whole number >= 1")
    prompt = data.get("prompt")
    keys = {"recall", "analyze", "summarize", "summarize_extra", "options"}
    if not isinstance(prompt, dict) or not all(isinstance(v, dict) and keys <= set(v) for v in prompt.values()):
        raise bad(f"'prompt' must hold, per benchmark, {sorted(keys)}")
    if not isinstance(data.get("group"), dict):
        raise bad("'group' must be an object")
    share = data.get("attn_share")
    return LatencyFit(dict(data["group"]), layers, None if share is None else float(share),
                      {k: float(v) for k, v in params.items()}, prompt, dict(data.get("fit") or {}),
                      list(data.get("records") or []), dict(data.get("residuals") or {}))
