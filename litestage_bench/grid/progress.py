"""What the main job shows while it runs: the expected time when it starts, and the lines of every
worker as they come.

pytest captures a test's output, and xdist workers' output never reaches the terminal, so a case's
inner progress (runner.log: a line per accuracy batch and per timed item) goes to a file named by
LITESTAGE_PROGRESS_FILE, which the controller tails to its own stderr (as saved before capturing)
from a background thread: in a terminal and when piped to a file alike.
"""
from __future__ import annotations

import json
import os
import statistics
import threading
from pathlib import Path

from ..evaluation.runner import PROGRESS_FILE_ENV


class ProgressTail:
    """Copies the lines appended to `path` to file descriptor `fd`, every `interval` seconds."""

    def __init__(self, path: Path, fd: int, interval: float = 0.5) -> None:
        self.path, self.fd, self.interval = path, fd, interval
        self.path.write_text("")
        self._offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="litestage-progress", daemon=True)

    def start(self) -> "ProgressTail":
        os.environ[PROGRESS_FILE_ENV] = str(self.path)  # the workers, started later, inherit it
        self._thread.start()
        return self

    def _copy(self) -> None:
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # whole lines only; a line being written waits for the next look
        if end:
            os.write(self.fd, data[:end])
            self._offset += end

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._copy()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._copy()
        os.environ.pop(PROGRESS_FILE_ENV, None)


def saved_stderr_fd(capture_manager) -> int:
    """A duplicate of the stderr pytest had before it started capturing (fd capture keeps one), else of fd 2."""
    capturing = getattr(capture_manager, "_global_capturing", None)
    err = getattr(capturing, "err", None)
    return os.dup(getattr(err, "targetfd_save", 2))


def expected_seconds(cases: list, limit: int | None, timed: int | None, rounds: int, workers: int,
                     reference: Path) -> tuple[float, str] | None:
    """The main job's expected wall time from a committed grid run (`reference`, its grid.json): per
    case its accuracy seconds scaled by the item count and its timing seconds by the timed questions,
    a case it did not run taken at the median of its model's cases; None without a reference."""
    try:
        ref = json.loads(reference.read_text())
        sel = ref["selection"]
        rows = {c["case"]: c for c in ref["cases"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ref_limit, ref_timed = sel.get("limit") or 1, (sel.get("timed") or 1) * (sel.get("rounds") or 1)
    scale_acc, scale_time = (limit or ref_limit) / ref_limit, (timed or ref_timed) * rounds / ref_timed

    def seconds(c: dict) -> float:
        return c.get("accuracy_seconds", 0.0) * scale_acc + c.get("timed_seconds", 0.0) * scale_time
    by_model: dict[str, list[float]] = {}
    for c in rows.values():
        by_model.setdefault(c.get("model"), []).append(seconds(c))
    total = 0.0
    for case in cases:
        row = rows.get(case.id)
        if row is not None:
            total += seconds(row)
        elif by_model.get(case.model):
            total += statistics.median(by_model[case.model])
        else:
            return None
    machine = ref.get("machine", {})
    return total / max(workers, 1), f"{reference} of {ref.get('created', '?')[:10]}, {machine.get('cpu', '?')}"
