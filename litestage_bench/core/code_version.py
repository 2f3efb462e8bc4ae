"""The version of the code that shapes results: a hash of the package's and the baselines' sources,
of the installed method and benchmark plugins' sources (core/plugins.py) and of the torch and
transformers versions. The grid's accuracy cache and the LiteStage search's
candidate cache are keyed on it, so an edit to any such source invalidates what they stored."""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from .. import __version__
from .plugins import external_plugins

PACKAGE = Path(__file__).resolve().parents[1]
# Modules that render, drive or store results but cannot change a case's items: editing them keeps
# the cache (grid/run.py, which builds and runs the case, counts).
NOT_IN_CODE_VERSION = {"records/report.py", "cli.py", "__main__.py", "studies/speed.py", "studies/tuning.py",
                       "studies/shots.py", "studies/noise_floor.py",
                       "grid/__init__.py", "grid/cases.py", "grid/cache.py", "grid/store.py", "grid/report.py",
                       "grid/workers.py"}


# What runs while a solve is timed (the executor, the reasoner, the timing loop): a search's timing rows
# are keyed on these alone, so an edit elsewhere (the search's sweeps, records, studies) keeps them.
TIMING_FOLDERS = ("core", "engine", "evaluation")


def _digest(include) -> str:
    """sha256 of the torch and transformers versions, the package and baselines sources that
    `include(root name, relative path)` keeps, and the external plugins' sources."""
    import torch
    import transformers

    digest = hashlib.sha256(f"{__version__}|{torch.__version__}|{transformers.__version__}".encode())
    roots = [PACKAGE, PACKAGE.parent / "baselines"]
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            if not include(root.name, rel.as_posix()):
                continue
            digest.update(f"{root.name}/{rel.as_posix()}\0".encode())
            digest.update(path.read_bytes())
    for plugin in external_plugins():
        digest.update(f"plugin {plugin['group']} {plugin['name']}={plugin['value']} {plugin['sha256']}\0".encode())
    return digest.hexdigest()[:20]


@lru_cache(maxsize=1)
def code_version() -> str:
    """sha256 of the package, baselines and plugin sources that shape results, with the torch and
    transformers versions (kernels change numerics): any edit there invalidates the cache."""
    return _digest(lambda root, rel: rel not in NOT_IN_CODE_VERSION)


@lru_cache(maxsize=1)
def timing_code_version() -> str:
    """The same hash over the sources that run while a solve is timed (TIMING_FOLDERS of the package,
    the baselines, the plugins): what a stored timing depends on besides the machine."""
    return _digest(lambda root, rel: root != PACKAGE.name or rel.split("/")[0] in TIMING_FOLDERS)
