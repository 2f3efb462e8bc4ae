"""Least-squares fit of the latency model's costs (records/latency_model.py) from timed records.

Each record gets its own time scale exp(s_r): records of one group were timed hours or days apart,
on a machine that was sometimes busier, and the pairs of one record share that state (that is what
interleaving is for). The scales absorb it; the costs are what the records agree on. A predicted
speedup does not depend on the scale. Residuals are relative: a method row is
exp(s_r) x predicted / measured - 1 (per timed item, stage and part); a dense target is
sqrt(items) x (mean log predicted + s_r - mean log measured) for the geometric means that records
keep of dense. Costs are >= 0 (the per-stage constants of either sign); a small ridge breaks ties
between costs that the plans in the data cannot tell apart.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import UserError
from ..engine.plan import DENSE, STAGES
from .latency_data import RecordData
from .latency_features import FEATURES, FREE_SIGN, plan_of_policy

RIDGE = 1e-3
TINY = 1e-6  # seconds: a floor under predictions that enter a log
ANCHOR = 10.0  # weight of "the scales average 1": the costs are those of a typical record


@dataclass
class Block:
    """One record's feature rows and measurements."""

    path: str
    method: np.ndarray  # [items, stage, part, feature]
    dense: np.ndarray
    seconds: np.ndarray  # [items, stage, part] the method's measured
    dense_seconds: np.ndarray | None = None
    targets: list = field(default_factory=list)  # (rows [items, feature], mean log seconds, weight)

    def speedup(self, theta: np.ndarray) -> float:
        d = np.maximum(self.dense.sum(axis=(1, 2)) @ theta, TINY)
        m = np.maximum(self.method.sum(axis=(1, 2)) @ theta, TINY)
        return float(np.exp(np.mean(np.log(d) - np.log(m))))


def block_of(rd: RecordData, rows_of) -> Block:
    """`rows_of(plan, exits, counts, bench, reuse_kv)`: feature rows of one side of one item."""
    rec = rd.record
    plan, exits = plan_of_policy(rec.policy)
    reuse_kv = rec.config.get("reuse_kv", True)
    m = np.array([rows_of(plan, exits, t.method, rec.benchmark, reuse_kv) for t in rd.items])
    d = np.array([rows_of(DENSE, frozenset(), t.dense, rec.benchmark, reuse_kv) for t in rd.items])
    dense_s = np.array([t.dense_seconds for t in rd.items]) if all(t.dense_seconds for t in rd.items) else None
    block = Block(rd.path, m, d, np.array([t.seconds for t in rd.items]), dense_s)
    if dense_s is None:  # only geometric means of dense: one target per stage, stage prefill, question
        for (kind, s), target in rd.dense_targets.items():
            i = STAGES.index(s) if s else None
            x = d.sum(axis=(1, 2)) if kind == "total" else d[:, i].sum(axis=1) if kind == "stage" else d[:, i, 0]
            block.targets.append((x, target, math.sqrt(len(x))))
    return block


def _rows(blocks: list[Block]):
    x, y, owner = [], [], []
    for r, b in enumerate(blocks):
        sides = [(b.method, b.seconds)] + ([(b.dense, b.dense_seconds)] if b.dense_seconds is not None else [])
        for rows, secs in sides:
            keep = secs > 0
            x.append(rows[keep])
            y.append(secs[keep])
            owner.append(np.full(int(keep.sum()), r))
    return np.vstack(x), np.concatenate(y), np.concatenate(owner)


def solve(blocks: list[Block]) -> tuple[np.ndarray, np.ndarray]:
    """(costs per feature, log time scale per record) fitted to `blocks`."""
    from scipy.optimize import least_squares, lsq_linear

    if not blocks:
        raise UserError("no timed records to fit the latency model from", "time records with --timed N")
    x, y, owner = _rows(blocks)
    targets = [(rows, t, wt, r) for r, b in enumerate(blocks) for rows, t, wt in b.targets]
    w = x / y[:, None]  # relative errors
    # columns scaled to comparable size (dense rows relative to their geometric-mean seconds)
    scale = np.abs(np.vstack([w] + [rows / math.exp(t) for rows, t, _, _ in targets])).max(axis=0)
    used = scale > 0
    scale[~used] = 1.0
    ws = w[:, used] / scale[used]
    dense = [(rows[:, used] / scale[used], t, wt, r) for rows, t, wt, r in targets]
    lower = np.array([-np.inf if n in FREE_SIGN else 0.0 for n in FEATURES])[used]
    ridge = np.diag([0.0 if n in FREE_SIGN else math.sqrt(RIDGE) for n in FEATURES])[used][:, used]
    nz, nr = ws.shape[1], len(blocks)
    ones = np.concatenate([np.ones(len(y)), np.zeros(len(ridge))])
    z = lsq_linear(np.vstack([ws, ridge]), ones, bounds=(lower, np.inf)).x
    s = np.zeros(nr)
    for _ in range(3):  # alternate: each record's scale in closed form, then the costs
        p = ws @ z
        s = np.array([math.log(max(p[owner == r].sum(), TINY) / max((p[owner == r] ** 2).sum(), TINY))
                      if (owner == r).any() else 0.0 for r in range(nr)])
        s -= s.mean()
        z = lsq_linear(np.vstack([ws * np.exp(s[owner])[:, None], ridge]), ones, bounds=(lower, np.inf)).x

    def residuals(v):
        z, s = v[:nz], v[nz:]
        out = [np.exp(s[owner]) * (ws @ z) - 1, ridge @ z, [ANCHOR * s.mean()]]
        out.append([wt * (np.log(np.maximum(rows @ z, TINY)).mean() + s[r] - t) for rows, t, wt, r in dense])
        return np.concatenate(out)

    def jacobian(v):
        z, s = v[:nz], v[nz:]
        e = np.exp(s[owner])
        top = np.zeros((len(y), nz + nr))
        top[:, :nz] = ws * e[:, None]
        top[np.arange(len(y)), nz + owner] = e * (ws @ z)
        mid = np.hstack([ridge, np.zeros((len(ridge), nr))])
        anchor = np.concatenate([np.zeros(nz), np.full(nr, ANCHOR / nr)])[None, :]
        bottom = np.zeros((len(dense), nz + nr))
        for k, (rows, _, wt, r) in enumerate(dense):
            bottom[k, :nz] = wt * (rows / np.maximum(rows @ z, TINY)[:, None]).mean(axis=0)
            bottom[k, nz + r] = wt
        return np.vstack([top, mid, anchor, bottom])

    lo = np.concatenate([lower, np.full(nr, -np.inf)])
    v0 = np.concatenate([np.maximum(z, lower + 1e-12), s])
    v = least_squares(residuals, v0, jac=jacobian, bounds=(lo, np.inf), method="trf", x_scale="jac",
                      tr_solver="lsmr").x
    theta = np.zeros(len(FEATURES))
    theta[used] = v[:nz] / scale[used]
    return theta, v[nz:]
