"""Resumable runs: finished work of a long `run`, kept beside its output until the record is written.

Each finished batch (accuracy, with its seconds and CPU), each timed question and each timed
throughput chunk is appended as one JSON line to ``OUT.partial.jsonl`` and flushed; the first line
holds a fingerprint of everything that decides the results (model, dtype, items, method, settings). A rerun of the same command reads the lines back
and continues after them; a different command (other fingerprint) starts afresh; a line cut off
by a kill is ignored. Timed questions from before an interruption were timed in the earlier
process (the record counts them in ``timing.resumed_timed``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..records.results import ItemResult, item_from_dict, item_to_dict, write_text_atomic


def fingerprint(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:24]


class RunCheckpoint:
    """Lists of items (or, with `get_value`/`put_value`, plain JSON values) per (phase, key), read from
    and appended to a JSON-lines file.

    The file is written from the first finished batch on: a run that fails before any leaves none.
    ``replaced`` says that a checkpoint of another run (or an unreadable one) was removed."""

    def __init__(self, path: str | os.PathLike, config: dict[str, Any]) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint(config)
        self.entries: dict[tuple[str, str], list[ItemResult]] = {}
        self.values: dict[tuple[str, str], Any] = {}
        self.meta: dict[tuple[str, str], dict] = {}  # what a line says about its work (seconds, CPU), if anything
        self.replaced = False
        self._started = self._load()
        if not self._started and self.path.exists():
            self.path.unlink()
            self.replaced = True

    @classmethod
    def read(cls, path: str | os.PathLike) -> RunCheckpoint | None:
        """A checkpoint as it stands, whichever run wrote it, left untouched (a campaign's ledger);
        None when there is none."""
        try:
            fingerprint = json.loads(Path(path).read_text(encoding="utf-8").splitlines()[0])["fingerprint"]
        except (OSError, ValueError, IndexError, KeyError, TypeError):
            return None
        checkpoint = cls.__new__(cls)
        checkpoint.path, checkpoint.fingerprint, checkpoint.replaced = Path(path), fingerprint, False
        checkpoint.entries, checkpoint.values, checkpoint.meta = {}, {}, {}
        checkpoint._started = checkpoint._load(repair=False)
        return checkpoint

    def _load(self, repair: bool = True) -> bool:
        """Read a checkpoint of the same run; False when there is none (or another run's). `repair`:
        drop a line cut off by a kill from the file."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
            if json.loads(lines[0]).get("fingerprint") != self.fingerprint:
                return False
        except (OSError, ValueError, IndexError, AttributeError):
            return False
        good = lines[:1]
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                key = (entry["phase"], entry["key"])
                if "value" in entry:
                    self.values[key] = entry["value"]
                else:
                    self.entries[key] = [item_from_dict(it) for it in entry["items"]]
                if isinstance(entry.get("meta"), dict):
                    self.meta[key] = entry["meta"]
            except (ValueError, KeyError, TypeError):
                break  # a line cut off by a kill: it and anything after it are redone
            good.append(line)
        if repair and len(good) < len(lines):  # drop the cut-off tail, so that new lines follow good ones
            write_text_atomic(self.path, "\n".join(good) + "\n")
        return True

    @property
    def resumed(self) -> int:
        return len(self.entries) + len(self.values)

    def get(self, phase: str, key: str) -> list[ItemResult] | None:
        return self.entries.get((phase, key))

    def put(self, phase: str, key: str, items: list[ItemResult], meta: dict | None = None) -> None:
        self.entries[(phase, key)] = items
        if meta is not None:
            self.meta[(phase, key)] = meta
        self._append({"phase": phase, "key": key, "items": [item_to_dict(it) for it in items],
                      **({"meta": meta} if meta is not None else {})})

    def get_value(self, phase: str, key: str) -> Any:
        return self.values.get((phase, key))

    def put_value(self, phase: str, key: str, value: Any) -> None:
        self.values[(phase, key)] = value
        self._append({"phase": phase, "key": key, "value": value})

    def _append(self, entry: dict) -> None:
        line = json.dumps(entry)
        if not self._started:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"fingerprint": self.fingerprint}) + "\n" + line
            self._started = True
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def count(self, phase: str) -> int:
        return sum(1 for p, _ in [*self.entries, *self.values] if p == phase)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
