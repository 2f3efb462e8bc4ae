"""A cross-process exclusive lock on a file, for on-disk caches filled by concurrent processes
(pytest-xdist workers, two commands started together)."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no lock; callers also rename whole entries into place, which keeps readers safe
    fcntl = None


@contextlib.contextmanager
def file_lock(lock_path: Path, waiting: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if needed) for the block; print ``waiting`` if blocked.

    The kernel releases the lock when the process ends, even by a kill, so a crash never leaves it held.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:  # closing the file releases the lock
        if fcntl is not None:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting:
                    print(waiting, file=sys.stderr, flush=True)
                fcntl.flock(fh, fcntl.LOCK_EX)
        yield
