"""Type checks of JSON read from files (plans, policies, records).

A file written by hand or by another version can hold a list where an object belongs, a string
where a number belongs, a misspelled stage name or a NaN threshold. Each check below either
returns the value or raises one ``UserError`` naming the file, the place in it (``stages.recall.skip``)
and what was expected, so that no such file ends in an AttributeError deep inside a method or,
worse, in a silently different run.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from .errors import UserError


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Checker:
    """Checks values of one JSON document; ``source`` names it (a path), ``fix`` says how to mend it."""

    def __init__(self, source: str, fix: str) -> None:
        self.source = source
        self.fix = fix

    def fail(self, where: str, expected: str, value: Any = ...) -> UserError:
        got = "" if value is ... else f", not {_shown(value)}"
        return UserError(f"{self.source} is malformed: '{where}' must be {expected}{got}", self.fix)

    def obj(self, value: Any, where: str, optional: bool = False) -> dict:
        """A JSON object; with ``optional``, a missing value (None) reads as ``{}``."""
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, "an object", value)
        return value

    def lst(self, value: Any, where: str, optional: bool = False) -> list:
        if value is None and optional:
            return []
        if not isinstance(value, list):
            raise self.fail(where, "a list", value)
        return value

    def string(self, value: Any, where: str, none_ok: bool = False) -> str | None:
        if value is None and none_ok:
            return None
        if not isinstance(value, str):
            raise self.fail(where, "a string" + (" or null" if none_ok else ""), value)
        return value

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, "true or false", value)
        return value

    def number(self, value: Any, where: str, finite: bool = True, none_ok: bool = False) -> float | None:
        """A JSON number (not a string, not true/false); ``finite`` refuses NaN and infinities."""
        if value is None and none_ok:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or (finite and not math.isfinite(value)):
            raise self.fail(where, "a finite number" if finite else "a number", value)
        return float(value)

    def whole(self, value: Any, where: str, low: int | None = None, none_ok: bool = False) -> int | None:
        if value is None and none_ok:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
            raise self.fail(where, "a whole number" + (f" >= {low}" if low is not None else ""), value)
        return value

    def layers(self, value: Any, where: str, num_layers: int | None = None) -> list[int]:
        """A list of layer indices, each in 0..num_layers-1 (>= 0 when the count is unknown)."""
        for i, j in enumerate(self.lst(value, where)):
            self.whole(j, f"{where}[{i}]", 0)
            if num_layers is not None and j >= num_layers:
                raise UserError(f"{self.source} is malformed: '{where}' names layer {j} but the model has {num_layers} layers "
                                f"(0..{num_layers - 1})", self.fix)
        return value

    def keys(self, mapping: dict, where: str, allowed: Iterable[str], what: str = "key") -> dict:
        """Refuse names outside ``allowed``: a misspelled name must not be silently ignored."""
        allowed = tuple(allowed)
        unknown = [k for k in mapping if k not in allowed]
        if unknown:
            raise UserError(f"{self.source} is malformed: unknown {what} {unknown[0]!r} in '{where}'",
                            f"use only {', '.join(allowed)}; {self.fix}")
        return mapping

    def one_of(self, value: Any, where: str, allowed: Iterable[Any]) -> Any:
        allowed = tuple(allowed)
        if value not in allowed:
            raise self.fail(where, f"one of {', '.join(map(str, allowed))}", value)
        return value
