"""Shared pytest options and fixtures (see tests/bench_grid.py for the benchmark grid)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models and helpers

# On the project's machines the benchmark files lie in ../shared/data; users set LITESTAGE_DATA_DIR.
_SHARED = ROOT.parent / "shared" / "data"
if "LITESTAGE_DATA_DIR" not in os.environ and _SHARED.is_dir():
    os.environ["LITESTAGE_DATA_DIR"] = str(_SHARED)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("litestage", "litestage-bench grid selection")
    group.addoption("--models", default="smollm2-135m", help="comma-separated model aliases / ids")
    group.addoption("--benches", default="obqa,csqa,strategyqa", help="comma-separated benchmarks")
    group.addoption("--methods", default="all", help="comma-separated methods, or 'all'")
    group.addoption("--stages", default="recall,analyze,summarize",
                    help="stages a method may skip in (others run dense)")
    group.addoption("--limit", type=int, default=None,
                    help="items per benchmark, 0 = the whole evaluation split (default: 10 with --benchmark-only, 2 otherwise)")
    group.addoption("--dtype", default=None, help="float32 or bfloat16 (default: the model's default)")
    group.addoption("--device", default="cpu", help="cpu or cuda")
    group.addoption("--grid-out", default="results/grid", help="folder for the grid's records and table")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda = _cuda_available()
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))


def _cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


# --- the benchmark grid -------------------------------------------------------------------------

def _benchmark_only(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "benchmark_only", False))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "grid_case" not in metafunc.fixturenames:
        return
    from litestage_bench.grid import grid_methods
    opt = metafunc.config.getoption
    cases = [(m, b, x) for m in opt("--models").split(",") for b in opt("--benches").split(",")
             for x in grid_methods(opt("--methods"))]
    metafunc.parametrize("grid_case", cases, ids=["-".join(c) for c in cases])


@pytest.fixture(scope="session")
def grid_settings(pytestconfig: pytest.Config) -> dict:
    import shlex
    limit = pytestconfig.getoption("--limit")
    if limit is None:
        limit = 10 if _benchmark_only(pytestconfig) else 2
    limit = limit or None  # 0: the whole split
    stages = tuple(s.strip() for s in pytestconfig.getoption("--stages").split(",") if s.strip())
    return {"limit": limit, "stages": stages, "command": "pytest " + " ".join(shlex.quote(a) for a in pytestconfig.invocation_params.args)}


@pytest.fixture(scope="session")
def grid_session(pytestconfig: pytest.Config):
    """Loads each model once per pytest session."""
    from litestage_bench.runner import Session
    sessions: dict = {}

    def get(model: str):
        if model not in sessions:
            sessions.clear()  # one model in memory at a time
            sessions[model] = Session.open(model, dtype=pytestconfig.getoption("--dtype"),
                                           device=pytestconfig.getoption("--device"))
        return sessions[model]
    return get


@pytest.fixture(scope="session")
def grid_store(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory):
    from litestage_bench.grid import GridStore
    store = GridStore()
    yield store
    if store.cases:
        # Only the main job writes under results/; smoke runs in plain `pytest` write to a temp dir.
        folder = pytestconfig.getoption("--grid-out") if _benchmark_only(pytestconfig) else tmp_path_factory.mktemp("grid")
        table, _ = store.write(folder)
        pytestconfig.stash[_GRID_TABLE] = (str(folder), table)


_GRID_TABLE = pytest.StashKey[tuple]()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _GRID_TABLE in config.stash:
        folder, table = config.stash[_GRID_TABLE]
        terminalreporter.section("litestage-bench: speedup / accuracy")
        terminalreporter.write_line(table)
        terminalreporter.write_line(f"records and table.md written to {folder}")
