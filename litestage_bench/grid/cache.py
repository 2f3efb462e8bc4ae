"""The grid's accuracy cache: per-item results of a case's batched evaluation, on disk, keyed by
everything that decides them, so that a second `pytest --benchmark-only` only re-times.

Key = sha256 of the canonical JSON of the configuration (model and weights, data fingerprint,
split, items, method with its policy and k, stages, dtype, device type, reasoner config, batch
size, code version). An entry is one JSON file renamed into place whole (`atomic_write`): a
reader sees a complete entry or none. While an entry is computed its finished batches go to a
`RunCheckpoint` beside it, so a killed run resumes mid-case; a per-key file lock keeps two
processes (xdist workers, two runs) from computing or writing the same entry at once.
"""
from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..core.errors import UserError
from ..core.locking import file_lock
from ..evaluation.checkpoint import RunCheckpoint
from ..records.results import ItemResult, atomic_write, item_from_dict, item_to_dict

CACHE_SCHEMA = 1


def canonical(obj: Any) -> str:
    """The JSON text of ``obj`` as it reads back from disk: the round trip first turns int dict keys
    (AdaSkip's per-layer scales) into strings, which sort differently ("13" < "3"), so a config
    and its stored copy give the same text and the same key."""
    plain = json.loads(json.dumps(obj, default=str))
    return json.dumps(plain, sort_keys=True, separators=(",", ":"))


def cache_key(config: dict) -> str:
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:32]


class AccuracyCache:
    """Per-item results by configuration; ``folder=None`` disables caching (always computes)."""

    def __init__(self, folder: str | os.PathLike | None) -> None:
        self.folder = Path(folder) if folder is not None else None

    def path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{key}.json"

    def load(self, key: str, config: dict) -> list[ItemResult] | None:
        """The cached items, or None when there is no entry (or one that does not read back whole:
        it is then recomputed and replaced)."""
        if self.folder is None:
            return None
        try:
            entry = json.loads(self.path(key).read_text(encoding="utf-8"))
            if entry.get("schema") != CACHE_SCHEMA or canonical(entry.get("config")) != canonical(config):
                return None
            return [item_from_dict(it) for it in entry["items"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError, UserError):
            return None

    def get_or_compute(self, config: dict, compute: Callable[[RunCheckpoint | None], list[ItemResult]],
                       label: str = "", log: Callable[[str], None] | None = None) -> tuple[list[ItemResult], bool]:
        """(items, from_cache). ``compute(checkpoint)`` runs only on a miss; its finished batches
        are kept in the checkpoint until the entry is written, so an interrupted case resumes."""
        if self.folder is None:
            return compute(None), False
        key = cache_key(config)
        hit = self.load(key, config)
        if hit is not None:
            return hit, True
        waiting = f"[grid] {label}: waiting for another process computing the same accuracy entry {key}"
        with file_lock(self.folder / f"{key}.lock", waiting=waiting):
            hit = self.load(key, config)  # the other process may have written it meanwhile
            if hit is not None:
                return hit, True
            checkpoint = RunCheckpoint(self.folder / f"{key}.partial.jsonl", config)
            if checkpoint.resumed and log:
                log(f"[grid] {label}: resuming the accuracy run after {checkpoint.resumed} finished batches")
            items = compute(checkpoint)
            self.write(key, config, items)
            checkpoint.remove()
        return items, False

    def write(self, key: str, config: dict, items: list[ItemResult]) -> Path:
        entry = {"schema": CACHE_SCHEMA, "key": key, "config": config,
                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "items": [item_to_dict(it) for it in items]}
        return atomic_write(self.path(key), lambda fh: json.dump(entry, fh, allow_nan=False))
