"""The benchmark grid on a Ray cluster: `pytest --benchmark-only --ray [ADDRESS]`.

The pytest controller collects the grid as usual, then submits one Ray task per (model,
benchmark) group (the grouping xdist uses: `GridCase.group`) with its resource request: one GPU
on CUDA, else `--ray-cpus` CPUs. A task runs its group's cases in collection order (dense first)
through the same case runner as a serial run and hands each finished case, as the same JSON an
xdist worker sends, to a small collector actor; the controller merges them into its GridStore,
which sorts them, so records, tables and grid.json come from the same code as serial and xdist.

What a task needs travels with it: the code (Ray's `working_dir`: this checkout without results/),
the committed policies and the noise-floor file the records cite, and the benchmark files when
the controller reads a data folder (else the packaged copy in the code). Model weights resolve on
each node through the usual cache (`engine.models`: a file lock per conversion).

Faults: a task whose worker dies is retried `--ray-retries` times; the retry skips the cases the
collector already holds and the running case resumes from its checkpointed batches (accuracy
cache). Only whole cases reach the store. Ctrl-C cancels the cluster's tasks (`interrupt.CtrlC`).
Imported only under --ray: the base install does not need ray.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import ray

from ..core.errors import UserError
from ..evaluation import benchmarks, demos
from ..methods.registry import load_plugins
from ..records import noise
from ..records.results import atomic_write
from .cases import GridCase, GridSelection, needs_search
from .interrupt import CtrlC
from .store import GridStore

LOCAL = "local"  # `--ray` without an address: a Ray instance of this process
# test hook: a folder where a task writes `CASE.started` (its pid and attempt) as each case starts, then
# waits while the file `hold` there names the case
MARKERS_ENV = "LITESTAGE_RAY_MARKERS"
# seconds the controller has, after Ctrl-C, to cancel the tasks and shut down before it is ended
CTRL_C_GRACE_S = 60.0
# what the code upload leaves out: environments, history, and results (their few needed files ship apart)
EXCLUDES = [".venv", ".git", ".tox", "results", "build", "*.egg-info", "__pycache__", ".pytest_cache",
            ".hypothesis", ".benchmarks", "*.gguf", "*.safetensors"]
_ADDRESS = re.compile(r"[A-Za-z0-9_.\-\[\]:]+:\d+")
ADDRESSES = "use --ray alone (a local Ray instance), --ray auto or --ray HOST:6379"


def check_address(address: str) -> str:
    """`local`, `auto` or `HOST:PORT` (the cluster's GCS); else one line. A Ray client address
    (`ray://`) is refused: with Ray 2.60 the client server's session process, which unpickles the
    grid's tasks, could not load torch ("Intel oneMKL FATAL ERROR: Cannot load libtorch_cpu.so")."""
    if address.startswith("ray://"):
        raise UserError(f"--ray: '{address}' is a Ray client address, which the grid does not support "
                        "(the client server's session could not load torch)",
                        "run pytest on a node of the cluster with --ray auto or --ray HOST:6379 (on Kubernetes: "
                        "in the head pod, or as a RayJob's entrypoint)")
    if address in (LOCAL, "auto") or _ADDRESS.fullmatch(address):
        return address
    hint = " (pytest read a path as the address: put the paths before --ray, or write --ray=local)" \
        if Path(address).exists() or address.endswith(".py") else ""
    raise UserError(f"--ray: '{address}' is not a Ray address{hint}", ADDRESSES)


def _reachable(address: str, seconds: float = 10.0) -> None:
    """A TCP connect to HOST:PORT first: Ray itself retries an unreachable cluster for minutes."""
    if address in (LOCAL, "auto"):
        return
    host, _, port = address.rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=seconds):
        pass


@dataclass
class TaskSpec:
    """Everything a group's task needs besides its cases (pickled once per run)."""

    selection: GridSelection
    command: str
    cache: str  # "off", "shared" or "per node"
    cache_path: str | None  # the shared folder; per node: $LITESTAGE_CACHE/grid of each node
    cpus: int
    runner: str | None  # --grid-runner MODULE:FUNCTION (tests), else the real run_case
    files: dict[str, bytes] = field(default_factory=dict)  # relative to the task's code folder: policies...
    data: str | None = None  # "packaged" or "hub"; None: the folder in `data_files`
    data_files: dict[str, bytes] = field(default_factory=dict)


class _Benchmark:
    """pytest-benchmark's fixture as a case uses it, outside pytest: runs the timed call once."""

    def pedantic(self, target, args=(), kwargs=None, rounds=1, iterations=1):
        return target(*args, **(kwargs or {}))


@ray.remote(num_cpus=0, max_restarts=0)
class Collector:
    """The cases finished so far (they outlive a worker that dies), and the events the controller drains."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.done: dict[str, set[str]] = {}
        self.attempts: dict[str, int] = {}

    def begin(self, group: str, where: dict) -> tuple[int, list[str]]:
        self.attempts[group] = self.attempts.get(group, 0) + 1
        self.events.append(("begin", group, {**where, "attempt": self.attempts[group]}))
        return self.attempts[group], sorted(self.done.get(group, ()))

    def started(self, group: str, case_id: str) -> None:
        self.events.append(("started", group, case_id))

    def finished(self, group: str, case_id: str, text: str, searched: dict[str, str]) -> None:
        self.done.setdefault(group, set()).add(case_id)
        self.events.append(("finished", group, (case_id, text, searched)))

    def failed(self, group: str, case_id: str, error: str) -> None:
        self.done.setdefault(group, set()).add(case_id)  # a case's own error is final, as in a serial run
        self.events.append(("failed", group, (case_id, error)))

    def log(self, group: str, line: str) -> None:
        self.events.append(("log", group, line))

    def drain(self) -> list[tuple]:
        events, self.events = self.events, []
        return events


# --- the task, on a node ------------------------------------------------------------------------

def _write_files(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        path = root / name
        if not (path.is_file() and path.read_bytes() == content):
            atomic_write(path, lambda fh, c=content: fh.write(c), binary=True)


def _prepare_node(spec: TaskSpec) -> None:
    """Files, data and threads on this node, before any case."""
    _write_files(Path.cwd(), spec.files)  # the code folder Ray unpacked: policies, the noise floor
    os.environ.pop(noise.NOISE_FLOOR_ENV, None)  # the shipped file, as the controller read it
    if spec.data is not None:
        os.environ[benchmarks.DATA_DIR_ENV] = spec.data
    else:  # the controller's data folder, once per node and content
        digest = hashlib.sha256(repr(sorted(spec.data_files.items())).encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / "litestage-ray-data" / digest
        _write_files(folder, spec.data_files)
        os.environ[benchmarks.DATA_DIR_ENV] = str(folder)
    # the method registry as the controller had it (a retry may start at a non-dense case, before any
    # make_method has loaded the plugins)
    load_plugins()
    if not spec.selection.device.startswith("cuda"):
        import torch
        torch.set_num_threads(spec.cpus)


def _cache(spec: TaskSpec):
    from ..engine.models import cache_root
    from .cache import AccuracyCache
    if spec.cache == "off":
        return AccuracyCache(None)
    return AccuracyCache(spec.cache_path if spec.cache == "shared" else cache_root() / "grid")


def _runner(spec: TaskSpec) -> Callable:
    if not spec.runner:
        from .run import run_case
        return run_case
    import importlib
    sys.path.insert(0, str(Path.cwd() / "tests"))  # as conftest does for the test helpers
    module, _, name = spec.runner.partition(":")
    return getattr(importlib.import_module(module), name)


def _searched(result) -> dict[str, str]:
    """A policy this case searched: its path and text, for the controller's --policy-dir."""
    search = result.search or {}
    if search.get("source") != "searched":
        return {}
    return {search["path"]: Path(search["path"]).read_text(encoding="utf-8")}


def get_keeping_cpus(ref: ray.ObjectRef):
    """`ray.get(ref)` inside a task without lending the task's CPUs away. Blocked in ray.get on its
    main thread, a task gives its CPUs back for as long as it waits (Ray's rule for nested tasks, GPUs
    kept), and the next pending group starts on them: two groups then shared one core of a node
    (`tests/test_ray_grid.py`). Waiting on a helper thread keeps them reserved."""
    with ThreadPoolExecutor(1) as helper:
        return helper.submit(ray.get, ref).result()


@ray.remote
def run_group(spec: TaskSpec, cases: list[GridCase], collector) -> dict:
    """One (model, benchmark) group, dense first; each finished case goes to the collector at once."""
    from .run import GridContext
    group = cases[0].group
    context = ray.get_runtime_context()
    node, pid = context.get_node_id(), os.getpid()
    attempt, done = get_keeping_cpus(collector.begin.remote(group, {"node_id": node, "pid": pid}))
    _prepare_node(spec)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        collector.log.remote(group, line)

    worker = f"ray:{node[:8]}/{pid}"
    ctx = GridContext(spec.selection, _cache(spec), spec.command, search_dir=spec.selection.policy_dir,
                      worker=worker, log=log)
    runner = _runner(spec)
    markers = os.environ.get(MARKERS_ENV)
    for case in cases:
        if case.id in done:  # finished before this worker's predecessor died
            continue
        get_keeping_cpus(collector.started.remote(group, case.id))
        if markers:
            Path(markers, f"{case.id}.started").write_text(json.dumps({"pid": pid, "attempt": attempt}))
            _hold(Path(markers), case.id)
        try:
            result = runner(case, ctx, _Benchmark())
            result.accuracy_cache = spec.cache
            text = json.dumps([result.to_dict()], allow_nan=True)
            searched = _searched(result)
        except UserError as err:  # one line, as the serial run's test fails
            get_keeping_cpus(collector.failed.remote(group, case.id, f"litestage-bench: {err}"))
            continue
        except Exception:  # a bug: the traceback, and the group goes on as a serial run does
            get_keeping_cpus(collector.failed.remote(group, case.id, traceback.format_exc()))
            continue
        get_keeping_cpus(collector.finished.remote(group, case.id, text, searched))
    return {"node_id": node, "pid": pid, "attempt": attempt}


def _hold(markers: Path, case_id: str) -> None:
    """Tests: while the file MARKERS/hold names this case (the end of its id), wait before running it,
    so that a Ctrl-C reaches the session while the case is on its worker, however fast the machine."""
    hold = markers / "hold"
    while True:
        try:
            name = hold.read_text().strip()
        except FileNotFoundError:
            return
        if not name or not case_id.endswith(name):
            return
        time.sleep(0.1)


# --- the controller -----------------------------------------------------------------------------

def _data(selection: GridSelection) -> tuple[str | None, dict[str, bytes]]:
    """The benchmark source of the tasks: the controller's data folder shipped whole, else its keyword."""
    source = benchmarks.resolve_source(None)
    if not isinstance(source, Path):
        return str(source), {}
    files: dict[str, bytes] = {}
    for bench in selection.benches:
        names = [*benchmarks.LOCAL_FILES.get(bench, {}).values(), str(demos.demo_path(bench, Path(".")))]
        for name in names:
            if (source / name).is_file():
                files[name] = (source / name).read_bytes()
    return None, files


def _support_files(selection: GridSelection, cases: list[GridCase], root: Path) -> dict[str, bytes]:
    """The committed policies of the selected cases and the noise-floor file, by the path the code reads."""
    files = {}
    for case in cases:
        path = selection.policy_path(case)
        if case.method != "dense" and needs_search(case.method) and path.is_file():
            files[str(path)] = path.read_bytes()  # a relative --policy-dir lands under the task's code folder
    floor = Path(os.environ.get(noise.NOISE_FLOOR_ENV, noise.DEFAULT_DIR / "noise_floor.json"))
    if floor.is_file():
        files[str((noise.DEFAULT_DIR / "noise_floor.json").relative_to(noise.DEFAULT_DIR.parents[1]))] = floor.read_bytes()
    return files


class RayGrid:
    """The controller's side: connect, submit a task per group, merge finished cases as they come."""

    def __init__(self, address: str, *, retries: int, cpus: int, root: Path) -> None:
        self.address = check_address(address)
        if retries < 0 or cpus < 1:
            raise UserError("--ray-retries must be >= 0 and --ray-cpus >= 1", "e.g. --ray-retries 2 --ray-cpus 1")
        self.retries, self.cpus, self.root = retries, cpus, root
        self.errors: dict[str, str] = {}  # case id -> why it has no result
        self.tasks: dict[str, dict] = {}  # group -> cases, attempts (node, pid), status
        self.nodes: list[dict] = []
        self.cache = "off"

    def connect(self) -> None:
        env = {"OMP_NUM_THREADS": str(self.cpus)}
        if os.environ.get(MARKERS_ENV):
            env[MARKERS_ENV] = os.environ[MARKERS_ENV]
        runtime_env = {"working_dir": str(self.root), "excludes": EXCLUDES, "env_vars": env}
        local = {"include_dashboard": False} if self.address == LOCAL else {}
        try:
            _reachable(self.address)
            ray.init(address=None if self.address == LOCAL else self.address, runtime_env=runtime_env,
                     logging_level=logging.WARNING, **local)
        except (OSError, RuntimeError, ValueError) as err:  # ConnectionError and TimeoutError are OSErrors
            raise UserError(f"--ray: cannot connect to the Ray cluster at '{self.address}' "
                            f"({str(err).splitlines()[0] if str(err) else type(err).__name__})",
                            "start one (`ray start --head`), or check the address; a cluster with token "
                            "authentication also needs RAY_AUTH_MODE=token here") from None
        self.nodes = [{"node_id": n["NodeID"], "ip": n["NodeManagerAddress"],
                       "resources": {k: v for k, v in n["Resources"].items() if not k.startswith("node:")}}
                      for n in ray.nodes() if n.get("Alive")]

    def request(self, selection: GridSelection) -> dict:
        return {"num_gpus": 1, "num_cpus": 1} if selection.device.startswith("cuda") else {"num_cpus": self.cpus}

    def run(self, selection: GridSelection, cases: list[GridCase], store: GridStore, command: str,
            cache_option: str | None, runner: str | None,
            on_case: Callable[[str], None], on_log: Callable[[str], None]) -> None:
        """Run `cases` (collection order) on the cluster; finished ones go into `store` as they come
        (`on_case(case_id)` after each), errors into `self.errors`."""
        if cache_option == "off":
            self.cache, cache_path = "off", None
        elif cache_option:
            self.cache, cache_path = "shared", str(Path(cache_option).resolve())
        else:
            self.cache, cache_path = "per node", None
        data, data_files = _data(selection)
        spec = TaskSpec(selection=selection, command=command, cache=self.cache, cache_path=cache_path, cpus=self.cpus,
                        runner=runner, files=_support_files(selection, cases, self.root), data=data,
                        data_files=data_files)
        groups: dict[str, list[GridCase]] = {}
        for case in cases:
            groups.setdefault(case.group, []).append(case)
        with CtrlC(CTRL_C_GRACE_S, on_log) as ctrl_c:
            self.connect()
            collector = Collector.options(
                scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                    ray.get_runtime_context().get_node_id(), soft=True)).remote()
            spec_ref = ray.put(spec)
            refs = {}
            for group, members in groups.items():
                self.tasks[group] = {"cases": [c.id for c in members], "request": self.request(selection),
                                     "attempts": [], "finished": [], "status": "running"}
                task = run_group.options(max_retries=self.retries, retry_exceptions=False, **self.request(selection))
                refs[task.remote(spec_ref, members, collector)] = group
            running: dict[str, str] = {}  # group -> the case it is on
            try:
                while refs and not ctrl_c.requested.is_set():
                    ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
                    self._drain(collector, store, running, on_case, on_log)
                    for ref in ready:
                        group = refs.pop(ref)
                        try:
                            ray.get(ref)
                            self.tasks[group]["status"] = "done"
                        except ray.exceptions.RayError as err:
                            self._drain(collector, store, running, on_case, on_log)
                            self._group_failed(group, running.get(group), err)
                if ctrl_c.requested.is_set():
                    for ref in refs:
                        ray.cancel(ref, force=True)
                    # the cases finished before Ctrl-C: the interrupted session reports them (no tables)
                    self._drain(collector, store, running, on_case, on_log)
            finally:
                ray.kill(collector)
                ray.shutdown()
        if ctrl_c.requested.is_set():
            raise KeyboardInterrupt  # pytest ends the session as interrupted: no tables

    def _drain(self, collector, store: GridStore, running: dict[str, str], on_case, on_log) -> None:
        for kind, group, payload in ray.get(collector.drain.remote()):
            if kind == "begin":
                node = next((n for n in self.nodes if n["node_id"] == payload["node_id"]), {})
                self.tasks[group]["attempts"].append({**payload, "ip": node.get("ip")})
            elif kind == "started":
                running[group] = payload
            elif kind == "finished":
                case_id, text, searched = payload
                for path, policy in searched.items():  # a policy searched on a node joins --policy-dir here
                    atomic_write(Path(path), lambda fh, t=policy: fh.write(t))
                store.merge(text)
                self.tasks[group]["finished"].append(case_id)
                running.pop(group, None)
                on_case(case_id)
            elif kind == "failed":
                case_id, error = payload
                self.errors[case_id] = error
                running.pop(group, None)
            elif kind == "log":
                on_log(payload)

    def _group_failed(self, group: str, case_id: str | None, err: Exception) -> None:
        task = self.tasks[group]
        task["status"] = "failed"
        tries = len(task["attempts"])
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                            ray.exceptions.OutOfMemoryError)):
            why = (f"its Ray worker died {tries} time(s) (1 try + --ray-retries {self.retries}): retries exhausted "
                   f"({type(err).__name__})")
        failed = case_id or task["cases"][0]
        self.errors[failed] = f"litestage-bench grid: case {failed} (group {group}) failed on the Ray cluster: {why}"
        for other in task["cases"]:
            if other not in self.errors and other != failed and other not in task["finished"]:
                self.errors.setdefault(other, f"litestage-bench grid: case {other} did not run: case {failed} "
                                              f"of its group failed on the Ray cluster")

    def info(self) -> dict:
        """grid.json's `backend`: the cluster, its nodes and resources, and which task ran where."""
        return {"name": "ray", "address": self.address, "ray": ray.__version__, "retries": self.retries,
                "accuracy_cache": self.cache, "nodes": self.nodes, "tasks": self.tasks,
                "errors": dict(sorted(self.errors.items()))}

