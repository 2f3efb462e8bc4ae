"""Plugins: methods and benchmarks that installed distributions declare as Python entry points.

A distribution names them in its ``pyproject.toml``::

    [project.entry-points."litestage_bench.methods"]
    my_method = "my_package:MyMethod"          # a Method class (or factory: policy dict -> Method)
    [project.entry-points."litestage_bench.benchmarks"]
    my_bench = "my_package:BENCHMARK"          # an evaluation.jsonl_bench.JsonlBenchmark

The suite's own methods are declared the same way in its pyproject.toml, so no module imports a
plugin by name. Plugins from outside the package are part of the code version (their sources are
hashed) and are listed in every result record.
"""
from __future__ import annotations

import hashlib
import importlib.util
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from .errors import UserError

METHODS_GROUP = "litestage_bench.methods"
BENCHMARKS_GROUP = "litestage_bench.benchmarks"
GROUPS = (METHODS_GROUP, BENCHMARKS_GROUP)
# Top-level modules whose sources code_version already hashes with the package.
BUILTIN_MODULES = ("litestage_bench", "baselines")

_LOADED: dict[str, dict[str, Any]] = {}


def group_entry_points(group: str) -> list[EntryPoint]:
    """The group's entry points, sorted by name (one per name and value)."""
    unique = {(ep.name, ep.value): ep for ep in entry_points(group=group)}
    return [unique[key] for key in sorted(unique)]


def _distribution(ep: EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    return (dist.metadata["Name"], dist.version) if dist is not None else (None, None)


def load_entry_point(ep: EntryPoint) -> Any:
    """Import one entry point; a plugin that fails to import is a one-line UserError naming it."""
    try:
        return ep.load()
    except Exception as exc:  # any error inside a third-party module: report it, not a traceback
        name, _ = _distribution(ep)
        detail = str(exc).splitlines()[0][:200] if str(exc) else "no detail"
        raise UserError(f"plugin {ep.name!r} ({ep.group} = {ep.value!r}) failed to import: "
                        f"{type(exc).__name__}: {detail}",
                        f"fix or uninstall the distribution that provides it"
                        f"{f' (pip uninstall {name})' if name else ''}") from None


def load_group(group: str) -> dict[str, Any]:
    """name -> loaded object of every entry point of the group (imported once per process)."""
    if group not in _LOADED:
        loaded: dict[str, Any] = {}
        for ep in group_entry_points(group):
            obj = load_entry_point(ep)
            if ep.name in loaded and loaded[ep.name] is not obj:
                raise UserError(f"two plugins in {group} are named {ep.name!r}",
                                "uninstall one of the distributions that declare it")
            loaded[ep.name] = obj
        _LOADED[group] = loaded
    return _LOADED[group]


def is_builtin(ep: EntryPoint) -> bool:
    return ep.module.split(".")[0] in BUILTIN_MODULES


def source_files(ep: EntryPoint) -> tuple[Path | None, list[Path]]:
    """(root, .py files) of the entry point's top-level module or package, found without importing
    it; root is the folder the module lives in."""
    try:
        spec = importlib.util.find_spec(ep.module.split(".")[0])
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return None, []
    if spec.submodule_search_locations:  # a package: every module in it
        locations = [Path(loc) for loc in spec.submodule_search_locations]
        files = sorted(p for loc in locations for p in loc.rglob("*.py") if "__pycache__" not in p.parts)
        return locations[0].parent, files
    origin = Path(spec.origin)
    return origin.parent, [origin] if origin.suffix == ".py" else []


def source_sha256(ep: EntryPoint) -> str:
    """sha256 of the plugin's source files (their paths below the module's folder, and bytes)."""
    digest = hashlib.sha256()
    root, files = source_files(ep)
    if not files:
        digest.update(b"unresolved")  # not importable: the record says so, the hash stays stable
    for path in files:
        digest.update(f"{path.relative_to(root).as_posix()}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def external_plugins() -> list[dict[str, Any]]:
    """Every installed plugin from outside the package, with the sha256 of its sources: what
    code_version hashes and result records list. (The registries import all of a group's entry
    points to list their names, so an installed plugin is a loaded one.)"""
    out = []
    for group in GROUPS:
        for ep in group_entry_points(group):
            if is_builtin(ep):
                continue
            dist, version = _distribution(ep)
            out.append({"group": group, "name": ep.name, "value": ep.value, "distribution": dist,
                        "version": version, "sha256": source_sha256(ep)})
    return out
