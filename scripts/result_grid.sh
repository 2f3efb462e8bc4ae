#!/usr/bin/env bash
# The benchmark grid at the item counts of the LiteStage and baseline results (issue 9): one
# (model, benchmark) group per call, every method at its default point, on the same seeded evaluation
# items as results/litestage/ and results/baselines/ (200 for SmolLM2, 100 for Qwen), TIMED of them
# timed at batch 1 in the same process as dense.
#   bash scripts/result_grid.sh MODEL BENCH LIMIT TIMED [EXTRA PYTEST OPTIONS...]
# e.g. bash scripts/result_grid.sh smollm2-135m obqa 200 20
# Output: results/grid-items/MODEL_BENCH/ (records/, table.md, grid.json, pareto PNG), written to a
# side folder first and moved into place whole, so an interrupted run leaves the last complete one.
# Methods without a committed policy in results/policies/ are skipped, saying so (--no-search).
# One thread per call: run two groups side by side. An interrupted call resumes from the grid's
# accuracy cache ($LITESTAGE_CACHE/grid) when run again on the same machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 4 ] || { echo "usage: $0 MODEL BENCH LIMIT TIMED [EXTRA PYTEST OPTIONS...]" >&2; exit 2; }
model=$1 bench=$2 limit=$3 timed=$4; shift 4
# shellcheck disable=SC1091
. "${LITESTAGE_VENV:-.venv}/bin/activate"
dest="results/grid-items/${model}_${bench}"
partial="${dest}.partial"
rm -rf "$partial"
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m pytest --benchmark-only tests/bench_grid.py -p no:cacheprovider \
  --models "$model" --benches "$bench" --limit "$limit" --timed "$timed" --no-search \
  --grid-out "$partial" "$@"
[ -f "$partial/table.md" ] || { echo "no table written under $partial" >&2; exit 1; }
rm -rf "$dest"
mv "$partial" "$dest"
echo "grid of $model x $bench at $limit items written to $dest"
