"""Parallel grids with pytest-xdist: which worker this is, its threads or CUDA device, and the
progress line (with ETA) that the controller prints per finished case."""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field

WORKER_ENV, COUNT_ENV = "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"


def worker_id() -> str:
    """`gw0`, `gw1`... in an xdist worker; `main` in a serial run (and in the controller)."""
    return os.environ.get(WORKER_ENV, "main")


def worker_count() -> int:
    return int(os.environ.get(COUNT_ENV, "1"))


def worker_index() -> int:
    wid = worker_id()
    return int(wid[2:]) if wid.startswith("gw") and wid[2:].isdigit() else 0


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pin_worker(device: str) -> tuple[int, str]:
    """In an xdist worker: torch threads = cores // workers (at least 1), and on CUDA the worker's
    own device (worker index modulo device count). Returns (threads, device). A serial run keeps
    torch's defaults (OMP_NUM_THREADS or all cores)."""
    import torch

    if worker_id() == "main":
        return torch.get_num_threads(), device
    torch.set_num_threads(max(1, usable_cores() // worker_count()))
    if device == "cuda" and torch.cuda.is_available() and torch.cuda.device_count():
        index = worker_index() % torch.cuda.device_count()
        torch.cuda.set_device(index)  # also where torch.cuda.synchronize() without a device waits
        device = f"cuda:{index}"
    return torch.get_num_threads(), device


def case_id(nodeid: str) -> str | None:
    """The grid case id in a node id (`...::test_grid[ID]`, maybe with xdist's `@group` suffix)."""
    if "::test_grid[" not in nodeid:
        return None
    return nodeid.split("::test_grid[", 1)[1].rsplit("]", 1)[0]


def group_scheduler(config, log, groups: dict[str, str]):
    """xdist scheduling that sends each (model, benchmark) group of grid cases to one worker, whole
    and in collection order (dense first); every other test is a unit of its own, as with
    `--dist load`. It is `--dist loadgroup` keyed by case id: xdist 3.8 marks groups by rewriting
    `item._nodeid`, which pytest 9 no longer reads, so its loadgroup silently splits groups."""
    from xdist.scheduler import LoadScopeScheduling

    # fewer groups than workers (the main job: one model x one benchmark): each group is dealt out
    # over the workers, case by case; each case times dense beside itself, and the controller
    # compares every case with its group's dense case once all are merged
    index: dict[str, int] = {}
    seen: dict[str, int] = {}
    for cid, group in groups.items():  # in collection order: dense first
        index[cid] = seen.get(group, 0)
        seen[group] = index[cid] + 1

    class GridGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            cid = case_id(nodeid) or ""
            group = groups.get(cid)
            if not group:
                return nodeid
            parts = self.numnodes if len(set(groups.values())) < self.numnodes else 1
            return f"litestage-grid:{group}:{index[cid] % parts}"

    return GridGroupScheduling(config, log)


def cuda_device_count(device: str) -> int | None:
    """GPUs for `-n auto` on CUDA (one worker per GPU); None leaves xdist's own choice (CPU count)."""
    if not device.startswith("cuda"):
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.device_count() or None


@dataclass
class Progress:
    """Counts finished cases; a line per case with the time it took and the ETA of the rest."""

    total: int = 0
    done: int = 0
    workers: int = 1
    start: float = field(default_factory=time.perf_counter)
    seconds: dict[str, list[float]] = field(default_factory=dict)  # per worker, its cases' seconds

    def eta(self, left: int) -> float:
        """The rest at the median case time, leaving out each worker's first case (it loads the model)
        while a later one exists, spread over the workers."""
        later = [s for times in self.seconds.values() for s in times[1:]]
        pool = later or [s for times in self.seconds.values() for s in times]
        return statistics.median(pool) * left / max(self.workers, 1) if pool else 0.0

    def line(self, summary: dict) -> str:
        self.done += 1
        self.seconds.setdefault(summary.get("worker", ""), []).append(summary.get("seconds", 0.0))
        left = max(self.total - self.done, 0)
        eta = self.eta(left)
        acc = summary.get("accuracy")
        speed = summary.get("speedup")
        parts = [f"[grid {self.done}/{self.total or '?'} {summary.get('worker', '')}]".replace(" ]", "]"),
                 f"{summary['case']}:",
                 f"acc {acc:.3f}" if isinstance(acc, (int, float)) else "acc -",
                 "(cached)" if summary.get("accuracy_cached") else "(computed)",
                 f"{speed:.2f}x vs dense" if isinstance(speed, (int, float)) else "",
                 f"{summary.get('seconds', 0):.1f} s;",
                 f"eta {eta / 60:.1f} min" if left else "last case"]
        return " ".join(p for p in parts if p)
