"""The benchmark grid behind `pytest --benchmark-only` (tests/bench_grid.py, options in conftest.py).

- `cases`: the selection (models x benchmarks x methods x budget points x stage selections);
- `run`: one case: its policy (committed or searched), accuracy (batched, cached), batch-1 timing;
- `cache`: the on-disk accuracy cache, keyed by the full configuration, resumable and lock-safe;
- `store`: finished cases, merged across xdist workers in a fixed order, and their records;
- `report`: per model x benchmark tables, the per-stage breakdown, Pareto plots, grid.json;
- `workers`: xdist worker threads / CUDA device, and the progress line with its ETA.
"""
