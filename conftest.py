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
                    help="items per benchmark (default: 10 with --benchmark-only, 2 otherwise)")
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
