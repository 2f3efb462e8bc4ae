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


@lru_cache(maxsize=1)
def code_version() -> str:
    """sha256 of the package, baselines and plugin sources that shape results, with the torch and
    transformers versions (kernels change numerics): any edit there invalidates the cache."""
    import torch
    import transformers

    digest = hashlib.sha256(f"{__version__}|{torch.__version__}|{transformers.__version__}".encode())
    roots = [PACKAGE, PACKAGE.parent / "baselines"]
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            if rel.as_posix() in NOT_IN_CODE_VERSION:
                continue
            digest.update(f"{root.name}/{rel.as_posix()}\0".encode())
            digest.update(path.read_bytes())
    for plugin in external_plugins():
        digest.update(f"plugin {plugin['group']} {plugin['name']}={plugin['value']} {plugin['sha256']}\0".encode())
    return digest.hexdigest()[:20]
