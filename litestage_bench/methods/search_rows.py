"""The LiteStage search's progress as small JSON rows in the repository (results/search/MODEL_BENCH/).

A search is split over machines that do not keep their disks, so every measured piece is one file
that can be committed as soon as it is written:

- ``dense-SHA.json``: dense on the calibration items (its per-item results and the confidences
  that set the early-exit thresholds);
- ``importance-SHA.json``: the per-stage sub-layer importance vectors;
- ``answers-SHA.json``: one candidate plan on one chunk of the calibration items (a look): the
  counts the target test adds up, and per item the answer, its correctness, the tokens and
  executed cost per stage and a hash of each stage's output;
- ``timing-SHA.json``: one candidate timed at batch 1, interleaved with dense, with its CPU;
- ``throughput-SHA.json``: with `--timing batch=B`, a timed candidate's throughput over dense at
  batch B (chunks of calibration items, interleaved; evaluation/throughput.py), with its CPU.

SHA is a hash of the row's key. Keys hold what decides the row's numbers (model, numerics, items,
reasoner settings, the plan, and for timings the CPU and code version); answers are keyed on the
CPU only where the numerics are not exact across CPUs (noise.exact_numerics). In place of the
code version, answer keys hold a *canary*: a hash of dense's outputs on the first calibration
chunk, re-run by every search at its start. A code or numerics change that alters dense's outputs
so starts a fresh set of rows, while an edit that changes nothing measured keeps them; a change
that alters only what a skip plan computes must bump ROWS_VERSION. Nothing is pickled. A row read
back is validated, and a bad one stops the search with a one-line error (exit 2).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from ..core.errors import UserError
from ..records.results import atomic_write, item_from_dict

ROWS_VERSION = 1  # bump when a change alters what a skip plan computes but not dense's outputs
KINDS = ("dense", "dense-batch", "importance", "answers", "timing", "throughput")
# the fields a row's value must hold, per kind (what the search reads back)
REQUIRED = {"dense": ("items", "means"), "dense-batch": ("ids", "items", "means", "probe"), "importance": (),
            "answers": ("n", "correct", "correct_to_wrong", "wrong_to_correct", "changed", "answer_kl_n",
                        "answer_kl_sum", "token_sums", "cost_fraction_sums", "cpu", "seconds"),
            "timing": ("speedup", "timing_seconds"),
            "throughput": ("throughput_speedup", "throughput_speedup_ci95", "batch_size")}


def key_sha(key: Any) -> str:
    """A short stable hash of a JSON-able key (row file names)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def ids_sha(ids: list[str]) -> str:
    """Item lists enter keys by their hash (a key stays small; the dense row lists the ids)."""
    return key_sha(list(ids))


def output_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def default_store(model_label: str, bench: str) -> Path:
    """Where a search keeps its rows: relative, so that committed files name no machine path."""
    return Path("results") / "search" / f"{model_label}_{bench}"


def _bad_row(path: Path, problem: str) -> UserError:
    return UserError(f"search row {path}: {problem}",
                     "restore it with `git checkout -- FILE`, or delete it to measure that piece again")


def read_row(path: Path, kind: str) -> dict:
    """A row's value, validated (UserError naming the file and the problem)."""
    return load_row(path, kind)["value"]


def load_row(path: Path, kind: str) -> dict:
    """A whole row (kind, key, label, value), validated."""
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _bad_row(path, f"not readable JSON ({exc.__class__.__name__})") from None
    if not isinstance(row, dict) or row.get("kind") != kind or not isinstance(row.get("value"), (dict, list)):
        raise _bad_row(path, f"not a '{kind}' row (needs 'kind' and 'value')")
    if row.get("rows_version") != ROWS_VERSION:
        raise _bad_row(path, f"rows_version {row.get('rows_version')!r}, this code reads {ROWS_VERSION}")
    value = row["value"]
    missing = [k for k in REQUIRED[kind] if not isinstance(value, dict) or k not in value]
    if missing:
        raise _bad_row(path, f"missing {', '.join(missing)}")
    if kind in ("dense", "dense-batch") and not isinstance(value["items"], list):
        raise _bad_row(path, "'items' must be a list")
    if not isinstance(row.get("key"), dict):
        raise _bad_row(path, "missing its key")
    return row


class RowStore:
    """One search's rows in a folder; `stored` reads a row or measures and writes it."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.read: list[str] = []  # file names read back, in order
        self.written: list[str] = []

    def path(self, kind: str, key: dict) -> Path:
        return self.root / f"{kind}-{key_sha({'rows_version': ROWS_VERSION, **key})}.json"

    def remove(self, kind: str, key: dict) -> None:
        """Delete a row whose content another row now holds (the dense pass's batch rows)."""
        path = self.path(kind, key)
        path.unlink(missing_ok=True)
        self.written = [n for n in self.written if n != path.name]
        self.read = [n for n in self.read if n != path.name]

    def stored(self, kind: str, key: dict, compute: Callable[[], Any], meta: dict | None = None) -> tuple[Any, bool, str]:
        """(value, whether it was read back, the row's file name)."""
        path = self.path(kind, key)
        if path.is_file():
            self.read.append(path.name)
            return read_row(path, kind), True, path.name
        value = compute()
        row = {"kind": kind, "rows_version": ROWS_VERSION, "key": key, **(meta or {}), "value": value}
        atomic_write(path, lambda fh: json.dump(row, fh, separators=(",", ":"), default=str))
        self.written.append(path.name)
        return value, False, path.name


def item_columns(results: list) -> dict:
    """Per item, compactly: answer, correctness, tokens and executed cost per stage, output hashes."""
    stages = list(results[0].tokens) if results else []
    return {"ids": [r.id for r in results], "prediction": [r.prediction for r in results],
            "correct": [int(bool(r.correct)) for r in results],
            "tokens": {s: [r.tokens[s] for r in results] for s in stages},
            "cost": {s: [round(r.executed_cost_fraction.get(s, 1.0), 5) for r in results] for s in stages},
            "output_sha": {s: [output_sha(r.outputs.get(s, "")) for r in results] for s in stages}}


def canary(results: list) -> str:
    """A hash of dense's answers and outputs on some items: equal only where they reproduce."""
    return key_sha([[r.id, r.prediction, sorted(r.outputs.items())] for r in results])


def generations_canary(results: list) -> str:
    """As ``canary`` over every answer rule's prediction instead of the chosen one: the same for any
    answer rule (the dense row's key: a rule only picks among predictions every run makes)."""
    return key_sha([[r.id, sorted((r.predictions_by_rule or {}).items()), sorted(r.outputs.items())]
                    for r in results])


def dense_row_items(value: dict, path: Path, rule: str) -> list:
    """The items of a dense row's value (read from `path`), each answered by `rule` from its every-rule
    predictions (the row serves every rule: see `generations_canary`)."""
    from ..records.fidelity import answered_by
    return [answered_by(item_from_dict(it, f"search row {path}", i), rule) for i, it in enumerate(value["items"])]


def model_source(source: str) -> str:
    """The model's source in a row key: a local folder by its name (which carries the weights' hash),
    never the machine's path to it, so that another machine's rows match; a hub id as it is."""
    return Path(source).name if os.path.isabs(source) else source
