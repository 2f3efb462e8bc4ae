"""Item by item, what differs between two records of one case: the regression gate's per-item check.

Items pair up by id (a repeated id pairs in order). What decides a verdict is compared: the item
set, the gold label, the prediction and correctness. A record whose gold labels were moved with its
predictions kept thus differs in gold on every moved item, though no prediction changed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .items import ItemResult

# Ids named in a message before "+K more".
SHOWN_IDS = 10


@dataclass
class ItemChanges:
    """Ids, in item order, of what changed from the reference to the current record."""

    one_side: list[str] = field(default_factory=list)  # on one side only (or repeated a different number of times)
    answers: list[str] = field(default_factory=list)  # the prediction changed, or on one side only
    gold: list[str] = field(default_factory=list)  # the gold label changed
    scoring: list[str] = field(default_factory=list)  # correctness changed with the same prediction and gold


def _gold(it: ItemResult) -> str:
    """The gold label as answers are matched against it (case and surrounding spaces do not count)."""
    return str(it.answer).strip().casefold()


def _by_id(items: list[ItemResult]) -> dict[str, list[ItemResult]]:
    out: dict[str, list[ItemResult]] = {}
    for it in items:
        out.setdefault(str(it.id), []).append(it)
    return out


def item_changes(base: list[ItemResult], cur: list[ItemResult]) -> ItemChanges:
    """What changed per item between ``base`` (the reference) and ``cur``."""
    b, c = _by_id(base), _by_id(cur)
    out = ItemChanges()
    for iid in dict.fromkeys([*b, *c]):
        xs, ys = b.get(iid, []), c.get(iid, [])
        if len(xs) != len(ys):
            out.one_side.append(iid)
            out.answers.append(iid)
            continue
        pairs = list(zip(xs, ys))
        if any(x.prediction != y.prediction for x, y in pairs):
            out.answers.append(iid)
        if any(_gold(x) != _gold(y) for x, y in pairs):
            out.gold.append(iid)
        if any(bool(x.correct) != bool(y.correct) and x.prediction == y.prediction and _gold(x) == _gold(y)
               for x, y in pairs):
            out.scoring.append(iid)
    return out


def id_list(ids: list[str]) -> str:
    """``q001, q002 +3 more``: the first SHOWN_IDS ids and how many are left out."""
    more = len(ids) - SHOWN_IDS
    return ", ".join(ids[:SHOWN_IDS]) + (f" +{more} more" if more > 0 else "")


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
