"""The copy of the benchmark items and TinyThinker demos that ships inside the package.

``litestage_bench/data/`` holds, built by ``scripts/build_packaged_data.py`` from the original files:

- ``{bench}.json.gz``: ``{"eval": [item, ...], "calib": [item, ...]}``, each item
  ``{"id", "stem", "options", "labels", "answer"}`` (the only fields the suite uses);
- ``tinythinker/{bench}_cot.json`` and ``tinythinker/LICENSE``: the demos, byte for byte;
- ``MANIFEST.json``: licence, source, item counts and the sha256 of every file (source and packaged);
  ``LICENSES.md``: the same licences for people.

Every file is checked against the manifest's sha256 before it is used.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

from ..core.errors import UserError

PACKAGED_DIR = Path(__file__).resolve().parents[1] / "data"
MANIFEST = "MANIFEST.json"
MANIFEST_VERSION = 1
ITEM_FIELDS = ("id", "stem", "options", "labels", "answer")
REBUILD = "reinstall litestage-bench, or rebuild the copy: `python scripts/build_packaged_data.py --data-dir DIR`"


def canonical_json(splits: dict[str, list[dict[str, Any]]]) -> bytes:
    """The packaged files' uncompressed content: compact JSON, sorted keys (hashable across sources)."""
    return json.dumps(splits, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def item_dict(q: Any) -> dict[str, Any]:
    """The packaged fields of a ``benchmarks.Question``."""
    return {"id": q.id, "stem": q.stem, "options": list(q.options), "labels": list(q.labels), "answer": q.answer}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _stat(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except OSError:
        raise UserError(f"packaged data file {str(path)!r} is missing", REBUILD) from None
    return (str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _manifest_cached(path_str: str, mtime_ns: int, size: int) -> dict[str, Any]:
    try:
        manifest = json.loads(Path(path_str).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"packaged data manifest {path_str!r} is unreadable ({exc})", REBUILD) from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != MANIFEST_VERSION:
        raise UserError(f"packaged data manifest {path_str!r} is not schema_version {MANIFEST_VERSION}", REBUILD)
    return manifest


def manifest(root: Path | None = None) -> dict[str, Any]:
    """The parsed ``MANIFEST.json`` of the packaged copy (``root`` defaults to ``PACKAGED_DIR``)."""
    return _manifest_cached(*_stat((root or PACKAGED_DIR) / MANIFEST))


def _entry(root: Path, group: str, name: str) -> dict[str, Any]:
    try:
        return manifest(root)[group][name]
    except (KeyError, TypeError):
        raise UserError(f"packaged data manifest in {str(root)!r} has no entry {group}.{name}", REBUILD) from None


def verified_bytes(path: Path, expected: str) -> bytes:
    """The bytes of ``path`` after checking them against ``expected`` (sha256 from the manifest)."""
    _stat(path)
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise UserError(f"sha256 mismatch for packaged data file {str(path)!r}: got {got}, manifest says {expected}",
                        REBUILD)
    return data


def items_file(bench: str, root: Path | None = None) -> tuple[Path, str]:
    """The packaged items file of ``bench`` and its sha256 from the manifest."""
    root = root or PACKAGED_DIR
    entry = _entry(root, "benchmarks", bench)
    return root / entry["file"], entry["sha256"]


def read_items(path: Path, expected: str) -> dict[str, Any]:
    """``{"eval": [...], "calib": [...]}`` raw item dicts from a packaged file, sha256-checked."""
    data = verified_bytes(path, expected)
    try:
        splits = json.loads(gzip.decompress(data).decode("utf-8"))
    except (OSError, EOFError, ValueError) as exc:
        raise UserError(f"packaged data file {str(path)!r} is not gzipped JSON ({exc})", REBUILD) from None
    if not isinstance(splits, dict):
        raise UserError(f"packaged data file {str(path)!r} is not a JSON object of splits", REBUILD)
    return splits


def demo_root(bench: str, root: Path | None = None) -> Path:
    """A folder laid out like the data folder (``tinythinker/{bench}_cot.json``), sha256-checked."""
    root = root or PACKAGED_DIR
    entry = _entry(root, "demos", bench)
    verified_bytes(root / entry["file"], entry["sha256"])
    return root
