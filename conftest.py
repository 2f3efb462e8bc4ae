"""Shared pytest options and fixtures; the benchmark grid's selection, parallel set-up and report.

The grid (tests/bench_grid.py, litestage_bench/grid/) runs as the main job under
`pytest --benchmark-only [-n N]` and as a 2-item smoke in a plain `pytest` run (nothing written
under results/ then). With pytest-xdist, every (model, benchmark) group runs on one worker
(a loadgroup-like scheduler: `pytest_xdist_make_scheduler`), workers send their finished cases to the controller, which prints a
progress line per case and writes the tables at the end. With `--ray [ADDRESS]` the controller
runs each group as a Ray task before the test loop (`pytest_runtestloop`, grid/ray_backend.py);
the grid's test items then report their case's result from the cluster.
"""
from __future__ import annotations

import functools
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models and helpers

# On the project's machines the benchmark files lie in ../shared/data; users set LITESTAGE_DATA_DIR.
_SHARED = ROOT.parent / "shared" / "data"
if "LITESTAGE_DATA_DIR" not in os.environ and _SHARED.is_dir():
    os.environ["LITESTAGE_DATA_DIR"] = str(_SHARED)

from litestage_bench.grid.store import GRID_PROPERTY  # noqa: E402  (after the data folder is set)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("litestage", "litestage-bench grid selection")
    group.addoption("--models", default=None, help="comma-separated model aliases, local folders or hub ids "
                                                   "(default smollm2-135m)")
    group.addoption("--benches", default=None, help="comma-separated benchmarks, or 'all' (default: obqa in the "
                                                   "main job, obqa,csqa,strategyqa in a plain pytest smoke)")
    group.addoption("--methods", default=None,
                    help="comma-separated methods, or 'all' (default: all with --benchmark-only, dense,unified in a "
                         "plain pytest smoke); dense always runs: every comparison is against it")
    group.addoption("--points", default=None,
                    help="budget points (k) per method, e.g. 'unified=2,4,8;early_exit=2,4' (defaults: unified 4; "
                         "early_exit 2; skipdecode 8; adaskip 8; shortgpt 4; sleb 2; smoke: unified 4); 'sweep' "
                         "(first) takes every method's sweep, e.g. 'sweep;unified=3'")
    group.addoption("--stages", default="all",
                    help="stage selections in which methods may skip (others run dense), ';'-separated: "
                         "e.g. 'all;analyze;recall,summarize' (default all)")
    group.addoption("--limit", type=int, default=None,
                    help="items per benchmark, 0 = the whole evaluation split (default: 4 with --benchmark-only, 2 otherwise)")
    group.addoption("--timed", type=int, default=None,
                    help="items of them timed at batch 1 per case, 0 = all (default: min(limit, 4); 1 in the smoke)")
    group.addoption("--rounds", type=int, default=None,
                    help="interleaved rounds per timed item: dense and the case's method back to back, the order "
                         "alternating (default 1 in the main job, 2 in a plain pytest smoke)")
    group.addoption("--batch-size", type=int, default=8, help="questions per batch for accuracy (default 8)")
    group.addoption("--timing", default="latency",
                    help="latency (batch 1, default), or batch=B: each case also times throughput at batch B, "
                         "dense and the method on the same chunks of B items, interleaved (docs/measuring.md)")
    group.addoption("--chunks", type=int, default=None,
                    help="with --timing batch=B: chunks of B items per case (default 4, or as many as the items hold)")
    group.addoption("--chunk-rounds", type=int, default=None,
                    help="with --timing batch=B: interleaved rounds per chunk (default 4)")
    group.addoption("--dtype", default=None, help="float32 or bfloat16 (default: the model's default)")
    group.addoption("--numerics", default=None,
                    help="float32, bfloat16 or bf16-matmul (litestage_bench/engine/numerics.py; default: the dtype's own)")
    group.addoption("--device", default="cpu", help="cpu, cuda (xdist: worker i uses GPU i modulo the count) or cuda:N")
    group.addoption("--grid-out", default="results/grid",
                    help="folder for the records, table.md, grid.json and Pareto plots (only with --benchmark-only)")
    group.addoption("--grid-cache", default=None,
                    help="accuracy cache folder, or 'off' (default: $LITESTAGE_CACHE/grid, i.e. "
                         "~/.cache/litestage-bench/grid; a temporary folder in the plain-pytest smoke)")
    group.addoption("--policy-dir", default="results/policies",
                    help="committed policies of the methods that need a search: MODEL_BENCH_METHOD.json")
    group.addoption("--no-search", action="store_true",
                    help="skip the cases of a method whose policy is not committed (default: search it on the "
                         "calibration split first; its cost is reported apart from the timings)")
    group.addoption("--search-limit", type=int, default=None, help="calibration items of such a search (default: the search's own)")
    group.addoption("--grid-runner", default=None, help="MODULE:FUNCTION that runs a case instead of the real one (tests)")
    group.addoption("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                    help="run the grid's (model, benchmark) groups as Ray tasks (needs pip install -e '.[ray]'): "
                         "alone, a local Ray instance; or auto, HOST:6379 (put it after the paths)")
    group.addoption("--ray-retries", type=int, default=2,
                    help="retries of a Ray task whose worker or node dies (default 2)")
    group.addoption("--ray-cpus", type=int, default=1,
                    help="CPUs each (model, benchmark) task asks for on CPU, and its torch threads (default 1); "
                         "on CUDA a task asks for one GPU")


# --- configuration ---------------------------------------------------------------------------

_MAIN = pytest.StashKey[bool]()
_SELECTION = pytest.StashKey[object]()
_STORE = pytest.StashKey[object]()
_PROGRESS = pytest.StashKey[object]()
_GRID_TABLE = pytest.StashKey[tuple]()
_RAY = pytest.StashKey[object]()
_EXIT = pytest.StashKey[int]()
_TAIL = pytest.StashKey[object]()


def _is_worker() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "xdist_group(name): run tests of the same group on one xdist worker")
    main_job = bool(config.getoption("benchmark_only", False))
    xdist = config.getoption("dist", "no") != "no" or _is_worker()
    if xdist and main_job:
        # pytest-benchmark switches itself off under xdist and then refuses --benchmark-only. The grid
        # reads its latencies from the reasoner, so it runs as the main job with pytest-benchmark's own
        # statistics off; conftest skips the non-benchmark tests instead (below).
        config.option.benchmark_only = False
    from litestage_bench.core.errors import UserError
    from litestage_bench.grid.cases import selection_from_options
    from litestage_bench.grid.store import GridStore
    from litestage_bench.grid.workers import Progress
    try:
        config.stash[_SELECTION] = selection_from_options(config.getoption, main_job)
    except UserError as err:
        raise pytest.UsageError(f"litestage-bench grid: {err}") from None
    config.stash[_MAIN] = main_job
    if config.getoption("--ray") is not None and not _is_worker():
        config.stash[_RAY] = _ray_grid(config, main_job, xdist)
    bench_json = config.getoption("benchmark_json", None)
    if bench_json and not _is_worker():  # pytest-benchmark saves it before the grid makes --grid-out
        Path(bench_json).parent.mkdir(parents=True, exist_ok=True)
    config.stash[_STORE] = GridStore()
    config.stash[_PROGRESS] = Progress()
    if not _is_worker():
        config.pluginmanager.register(_ProgressLines(config), "litestage-grid-progress")
        if main_job and config.getoption("--ray") is None:
            _start_progress_tail(config)


def _start_progress_tail(config: pytest.Config) -> None:
    """The main job's inner progress (a line per accuracy batch and timed item, from every worker),
    copied to the terminal as it comes (grid/progress.py)."""
    from litestage_bench.grid.progress import ProgressTail, saved_stderr_fd
    folder = Path(tempfile.mkdtemp(prefix="litestage-progress-"))
    fd = saved_stderr_fd(config.pluginmanager.get_plugin("capturemanager"))
    config.stash[_TAIL] = ProgressTail(folder / "progress.log", fd).start()


def _workers(config: pytest.Config) -> int:
    n = config.getoption("numprocesses", None) if config.getoption("dist", "no") != "no" else None
    return n if isinstance(n, int) and n > 0 else 1


def _ray_grid(config: pytest.Config, main_job: bool, xdist: bool):
    """The Ray backend for `--ray`, its options checked (one line each when wrong)."""
    import importlib.util

    from litestage_bench.core.errors import UserError
    try:
        if xdist:
            raise UserError("--ray and -n both spread the grid", "use one of them")
        if not main_job:
            raise UserError("--ray runs the benchmark grid", "add --benchmark-only")
        if config.getoption("--device").startswith("cuda:"):
            raise UserError("--ray gives each task a GPU of its own (Ray sets CUDA_VISIBLE_DEVICES)", "use --device cuda")
        if importlib.util.find_spec("ray") is None:
            raise UserError("--ray needs the optional extra ray", "pip install -e '.[ray]'")
        from litestage_bench.grid.ray_backend import RayGrid
        grid = RayGrid(config.getoption("--ray"), retries=config.getoption("--ray-retries"),
                       cpus=config.getoption("--ray-cpus"), root=ROOT)
    except UserError as err:
        raise pytest.UsageError(f"litestage-bench grid: {err}") from None
    # As under xdist: the cases are timed on the cluster, so pytest-benchmark's own statistics are
    # off here and conftest skips the non-benchmark tests itself (pytest_collection_modifyitems).
    config.option.benchmark_only = False
    config.option.benchmark_disable = True
    return grid


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`-n N` (dist load) or `--dist loadgroup`: each (model, benchmark) group on one worker."""
    if config.getoption("dist") not in ("load", "loadgroup"):
        return None
    from litestage_bench.grid.workers import group_scheduler
    return group_scheduler(config, log, {c.id: c.group for c in config.stash[_SELECTION].cases()})


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` on CUDA: one worker per GPU."""
    from litestage_bench.grid.workers import cuda_device_count
    return cuda_device_count(config.getoption("--device"))


def _cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.stash.get(_MAIN, False):
        # the main job runs the benchmark cases only: the other tests are deselected, not sent to the
        # workers one by one to be skipped (a thousand round trips, and a screen of 's')
        kept = [item for item in items if "benchmark" in getattr(item, "fixturenames", ())]
        if len(kept) < len(items):
            kept_ids = {id(item) for item in kept}
            config.hook.pytest_deselected(items=[item for item in items if id(item) not in kept_ids])
            items[:] = kept
    cuda = _cuda_available()
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))


# --- the benchmark grid -------------------------------------------------------------------------

def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "grid_case" not in metafunc.fixturenames:
        return
    sel = metafunc.config.stash[_SELECTION]
    params = []
    for case in sel.cases():
        marks = [pytest.mark.xdist_group(case.group)]
        if not Path(case.model).exists():  # a real model (a tiny local folder is not slow)
            marks.append(pytest.mark.slow)
        if sel.device.startswith("cuda"):
            marks.append(pytest.mark.gpu)
        if sel.missing_policy(case) and not sel.search_missing:
            marks.append(pytest.mark.skip(
                reason=f"no committed policy {sel.policy_path(case)} (--no-search): drop --no-search to search it "
                       f"on the calibration split first, or run `litestage-bench search --model {case.model} --bench "
                       f"{case.bench} --method {case.method} --out {sel.policy_path(case)}`"))
        params.append(pytest.param(case, id=case.id, marks=marks))
    metafunc.parametrize("grid_case", params)


def _command(config: pytest.Config) -> str:
    return "pytest " + " ".join(shlex.quote(a) for a in config.invocation_params.args)


@pytest.fixture(scope="session")
def grid_context(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory):
    """The grid's per-process state: selection, one model at a time, accuracy cache, policies."""
    from litestage_bench.engine.models import cache_root
    from litestage_bench.grid.cache import AccuracyCache
    from litestage_bench.grid.run import GridContext
    from litestage_bench.grid.workers import pin_worker, worker_id
    sel = pytestconfig.stash[_SELECTION]
    _, device = pin_worker(sel.device)
    cache_opt = pytestconfig.getoption("--grid-cache")
    if cache_opt == "off":
        cache = AccuracyCache(None)
    elif cache_opt:
        cache = AccuracyCache(cache_opt)
    elif sel.main_job:
        cache = AccuracyCache(cache_root() / "grid")
    else:  # the smoke always computes, and leaves nothing behind
        cache = AccuracyCache(tmp_path_factory.mktemp("grid-cache"))
    # searched policies join the committed ones only in the main job; the smoke keeps them in a temp dir
    search_dir = sel.policy_dir if sel.main_job else tmp_path_factory.mktemp("policies")
    from litestage_bench.evaluation.runner import log as runner_log  # to the progress file in the main job
    return GridContext(sel, cache, _command(pytestconfig), search_dir=search_dir, worker=worker_id(),
                       device=device, log=runner_log)


@pytest.fixture(scope="session")
def grid_store(pytestconfig: pytest.Config):
    return pytestconfig.stash[_STORE]


@pytest.fixture(scope="session")
def grid_runner(pytestconfig: pytest.Config):
    """The function that runs one case: the real one, or `--grid-runner MODULE:FUNCTION` (tests)."""
    if _RAY in pytestconfig.stash:
        return functools.partial(_ray_result, pytestconfig)
    spec = pytestconfig.getoption("--grid-runner")
    if not spec:
        from litestage_bench.grid.run import run_case
        return run_case
    import importlib
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _ray_result(config: pytest.Config, case, ctx, benchmark):
    """Under --ray: the case's result as the cluster produced it (already in the store), or its error."""
    ray_grid = config.stash[_RAY]
    if case.id in ray_grid.errors:
        pytest.fail(ray_grid.errors[case.id], pytrace=False)
    result = config.stash[_STORE].results.get(case.id)
    if result is None:
        pytest.fail(f"litestage-bench grid: case {case.id}: no result from the Ray cluster", pytrace=False)
    return benchmark.pedantic(lambda: result, rounds=1, iterations=1)  # pytest-benchmark is off: one call


# --- the grid on a Ray cluster ------------------------------------------------------------------

@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Under --ray: run the collected grid cases on the cluster first; the test loop then reports them."""
    config = session.config
    ray_grid = config.stash.get(_RAY, None)
    if ray_grid is None or config.option.collectonly or session.testsfailed:
        return None
    from litestage_bench.core.errors import UserError
    from litestage_bench.grid.cases import GridCase
    from litestage_bench.grid.store import case_summary
    from litestage_bench.grid.workers import case_id
    by_id: dict[str, GridCase] = {c.id: c for c in config.stash[_SELECTION].cases()}
    cases = [by_id[cid] for item in session.items
             if (cid := case_id(item.nodeid)) in by_id and item.get_closest_marker("skip") is None]
    if not cases:
        return None
    store, progress = config.stash[_STORE], config.stash[_PROGRESS]
    reporter = config.pluginmanager.get_plugin("terminalreporter")

    def line(text: str) -> None:
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(text)

    def finished(cid: str) -> None:
        result = store.results[cid]
        line(progress.line(case_summary(result, store.record_for(result))))

    try:
        ray_grid.run(config.stash[_SELECTION], cases, store, _command(config), config.getoption("--grid-cache"),
                     config.getoption("--grid-runner"), on_case=finished, on_log=line)
    except UserError as err:
        raise pytest.UsageError(f"litestage-bench grid: {err}") from None
    return None


# --- progress, merge across workers, the report at the end -----------------------------------

def _count_cases(config: pytest.Config, nodeids: list[str]) -> int:
    from litestage_bench.grid.workers import case_id
    sel = config.stash[_SELECTION]
    skipped = {c.id for c in sel.cases() if sel.missing_policy(c) and not sel.search_missing}
    return sum(1 for n in nodeids if (cid := case_id(n)) is not None and cid not in skipped)


def pytest_collection_finish(session: pytest.Session) -> None:
    if _is_worker():
        return
    config = session.config
    progress = config.stash[_PROGRESS]
    progress.total = _count_cases(config, [i.nodeid for i in session.items])
    progress.workers = _workers(config)
    if config.stash.get(_MAIN, False) and progress.total:
        _print_expected(config, [i.nodeid for i in session.items])


def _print_expected(config: pytest.Config, nodeids: list[str]) -> None:
    """The first line of the main job: how many cases, and the time they are expected to take."""
    from litestage_bench.grid.progress import expected_seconds
    from litestage_bench.grid.workers import case_id
    sel = config.stash[_SELECTION]
    ids = {case_id(n) for n in nodeids}
    cases = [c for c in sel.cases() if c.id in ids]
    guess = expected_seconds(cases, sel.limit, sel.timed, sel.rounds, _workers(config),
                             Path(config.getoption("--grid-out")) / "grid.json")
    when = (f"expected about {guess[0] / 60:.0f} min on {_workers(config)} worker(s) (from {guess[1]}; "
            "machines differ)") if guess else "no earlier run to estimate the time from"
    line = (f"[grid] {len(cases)} cases: {len(sel.models)} model(s) x {', '.join(sel.benches)} x "
            f"{len(sel.methods)} methods, {sel.limit or 'all'} items, {sel.timed or 'all'} timed in "
            f"{sel.rounds} rounds; {when}. Every benchmark: --benches all")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids) -> None:
    progress = node.config.stash[_PROGRESS]
    if not progress.total:  # every worker collects the same items
        progress.total = _count_cases(node.config, list(ids))
        progress.workers = _workers(node.config)
        if node.config.stash.get(_MAIN, False) and progress.total:
            _print_expected(node.config, list(ids))


class _ProgressLines:
    """Prints a line per finished grid case (with its ETA) in the serial run or the xdist controller."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" or not report.passed or _RAY in self.config.stash:  # --ray: printed as they came
            return
        summary = dict(report.user_properties).get(GRID_PROPERTY)
        if summary is None:
            return
        line = self.config.stash[_PROGRESS].line(summary)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(line)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    text = getattr(node, "workeroutput", {}).get(GRID_PROPERTY)
    if text:
        node.config.stash[_STORE].merge(text)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    config.stash[_EXIT] = int(exitstatus)
    store = config.stash.get(_STORE, None)
    if store is None or not store.results:
        return
    if _is_worker():
        config.workeroutput[GRID_PROPERTY] = store.dumps()
        return
    sel = config.stash[_SELECTION]
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        # keep the tables of the last complete run; the finished accuracies are cached already
        from litestage_bench.grid.interrupt import INTERRUPTED
        config.stash[_GRID_TABLE] = ("", INTERRUPTED)
        return
    from litestage_bench.grid.report import write_grid

    # Only the main job writes under results/; the plain-pytest smoke writes to a temp folder.
    folder = config.getoption("--grid-out") if sel.main_job else _smoke_folder(config)
    # the session's wall time (from configure: model loads, searches and all cases), for serial vs -n N
    wall = time.perf_counter() - config.stash[_PROGRESS].start
    text, folder = write_grid(store, folder, _command(config), sel.to_dict(), wall_seconds=wall, backend=_backend(config))
    config.stash[_GRID_TABLE] = (str(folder), text)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    tail = config.stash.get(_TAIL, None)
    if tail is not None:
        tail.stop()
    _ray_exit(config)


def _ray_exit(config: pytest.Config) -> None:
    """Under --ray, the controller process ends with pytest's exit code without the interpreter's
    teardown. Once, on a loaded 2-core machine, it died with SIGSEGV after the run: Ray's driver log
    showed its shutdown complete, and no Python stack was printed. Native libraries' teardown after
    Ray's (absl, gRPC, torch) is the suspect; nothing of the run is left to do by then."""
    if _RAY not in config.stash or _EXIT not in config.stash:
        return
    import atexit
    import logging

    def end(code: int) -> None:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    atexit.register(end, config.stash[_EXIT])  # registered last: the first exit handler to run


def _backend(config: pytest.Config) -> dict:
    if _RAY in config.stash:
        return config.stash[_RAY].info()
    if config.getoption("dist", "no") != "no":
        return {"name": "xdist", "workers": config.getoption("numprocesses", None)}
    return {"name": "serial"}


def _smoke_folder(config: pytest.Config) -> Path:
    # pytest's own temp folders (it keeps the last few sessions'); xdist uses the same attribute
    factory = getattr(config, "_tmp_path_factory", None)
    return factory.mktemp("grid-out") if factory is not None else Path(tempfile.mkdtemp(prefix="litestage-grid-"))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _GRID_TABLE in config.stash:
        folder, table = config.stash[_GRID_TABLE]
        terminalreporter.section("litestage-bench: speedup / accuracy")
        terminalreporter.write_line(table)
        if folder:
            terminalreporter.write_line(f"records/, table.md, grid.json and pareto_*.png written to {folder}")
        if config.getoption("dist", "no") != "no" or _RAY in config.stash:
            terminalreporter.write_line("(under xdist or Ray pytest-benchmark's own statistics are off; the tables' "
                                        "latencies are the grid's batch-1 timings)")
    if _RAY in config.stash and config.stash[_RAY].errors:
        terminalreporter.section("litestage-bench: cases that failed on the Ray cluster")
        for line in sorted(config.stash[_RAY].errors.values()):
            terminalreporter.write_line(line.strip().splitlines()[-1] if "Traceback" in line else line)
