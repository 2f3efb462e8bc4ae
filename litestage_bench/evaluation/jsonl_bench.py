"""Benchmark plugins: a multiple-choice benchmark read from a local JSONL file with a field mapping.

A plugin distribution declares one as an entry point of ``litestage_bench.benchmarks`` (the entry
point's name is the benchmark's name)::

    BENCHMARK = JsonlBenchmark(path=Path(__file__).with_name("items.jsonl"),
                               question="question.stem", choices="question.choices", label="answerKey")

Field paths are dotted (``question.stem``). ``choices`` is a list of ``{"text", "label"}`` objects
(ARC, OBQA), a ``{"text": [...], "label": [...]}`` object (the hub's form), or a list of strings
(labelled A, B, C...; then the label may also be a 0-based index). Labels may be letters or numbers
("1".."4", as in ARC): at load time every item's options are relabelled A, B, C... in their order,
because the prompts, the answer regex and the letter scorer speak option letters; the original
labels stay in ``Question.original_labels``.

Splits: ``calib_path`` when given, else a fixed seeded split of ``path`` (``eval_fraction`` of the
items for eval, the rest for calibration; a question text never lands on both sides). Few-shot
demos come from a built-in benchmark's TinyThinker demos (``demos``, default OBQA's).
"""
from __future__ import annotations

import functools
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from .benchmarks import BENCHMARKS, Question, _stat_key, seeded_split

LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class JsonlBenchmark:
    path: str | Path
    question: str = "question"
    choices: str = "choices"
    label: str = "answerKey"
    id: str = "id"
    calib_path: str | Path | None = None
    eval_fraction: float = 0.75
    demos: str = "obqa"

    def check(self, name: str) -> None:
        """UserError for a spec that cannot work, naming the plugin."""
        fix = f"fix the JsonlBenchmark of the benchmark plugin {name!r}"
        for path in (self.path, self.calib_path):
            if path is not None and not Path(path).is_file():
                raise UserError(f"benchmark plugin {name!r}: data file {str(path)!r} is missing", fix)
        if self.demos not in BENCHMARKS:
            raise UserError(f"benchmark plugin {name!r}: demos {self.demos!r} is not a built-in benchmark",
                            f"{fix}: demos is one of {', '.join(BENCHMARKS)}")
        if not 0 < self.eval_fraction < 1 and self.calib_path is None:
            raise UserError(f"benchmark plugin {name!r}: eval_fraction {self.eval_fraction} is not in (0, 1)", fix)

    def load(self, name: str, split: str) -> list[Question]:
        """The items of one split (file order for a file of its own, by id for a seeded split)."""
        self.check(name)
        if self.calib_path is not None:
            path = self.path if split == "eval" else self.calib_path
            return list(_read(self, name, *_stat_key(Path(path))))
        items = _read(self, name, *_stat_key(Path(self.path)))
        return seeded_split(items, round(len(items) * self.eval_fraction))[split]


def _field(rec: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        rec = rec[key]
    return rec


def _choices(raw: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(original labels, option texts) from any of the accepted choice forms."""
    if isinstance(raw, dict):
        return tuple(str(x).strip() for x in raw["label"]), tuple(str(x) for x in raw["text"])
    if raw and all(isinstance(c, str) for c in raw):
        return tuple(LETTERS[: len(raw)]), tuple(raw)
    return tuple(str(c["label"]).strip() for c in raw), tuple(str(c["text"]) for c in raw)


def to_question(spec: JsonlBenchmark, rec: Any) -> Question:
    """One record -> a Question with options labelled A, B, C... (ValueError / KeyError / TypeError
    for a malformed record)."""
    labels, options = _choices(_field(rec, spec.choices))
    key = _field(rec, spec.label)
    if isinstance(key, int) and not isinstance(key, bool) and labels == tuple(LETTERS[: len(labels)]):
        key = labels[key]  # a list of plain strings answered by index
    key = str(key).strip()
    stem = _field(rec, spec.question)
    if not isinstance(stem, str) or not stem.strip() or not options:
        raise ValueError("empty question or choices")
    if len(options) > len(LETTERS) or len(set(labels)) != len(labels):
        raise ValueError(f"choice labels {labels} are duplicated or more than {len(LETTERS)}")
    if key not in labels:
        raise ValueError(f"label {key!r} not among the choice labels {labels}")
    letters = tuple(LETTERS[: len(options)])
    return Question(id=str(_field(rec, spec.id)), stem=stem, options=options, labels=letters,
                    answer=letters[labels.index(key)], original_labels=labels)


@functools.lru_cache(maxsize=16)
def _read(spec: JsonlBenchmark, name: str, path: str, mtime_ns: int, size: int) -> tuple[Question, ...]:
    out: list[Question] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                out.append(to_question(spec, json.loads(line)))
            except (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
                why = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
                raise UserError(f"benchmark plugin {name!r}: malformed item at {path}:{lineno}: {why}",
                                f"fix the file, or the field mapping (question={spec.question!r}, "
                                f"choices={spec.choices!r}, label={spec.label!r})") from None
    ids = [q.id for q in out]
    if len(set(ids)) != len(ids):
        raise UserError(f"benchmark plugin {name!r}: duplicate ids in {path}", "give every item its own id")
    if not out:
        raise UserError(f"benchmark plugin {name!r}: no items in {path}", "add items to the file")
    return tuple(out)
