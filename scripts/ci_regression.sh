#!/usr/bin/env bash
# CI regression report (issue 9): a small grid on the default model, compared with the committed
# reference grid in results/reference/ by `litestage-bench compare`. Exit 0: no regression; 1: a
# regression; 2: an error (bad record, bad argument, or a crash: never read as a regression).
# Regressions: any changed answer (the grid runs float32 on CPU, where the noise floor never saw an
# answer flip, so the gate is exact; across numerics or devices it falls back to accuracy or agreement
# outside the reference's 95% CI), in both cases a changed item set, gold label, or correctness with
# the same prediction (the data or the scoring changed), a speedup ratio below 1 - max(SPEED_TOL, 3
# standard errors of the per-round speedups) (records without round speedups: more than SPEED_TOL
# below the reference's by its whole 95% CI), or a missing case. Speedups are ratios measured within
# one run, never seconds.
#   bash scripts/ci_regression.sh            # grid into a temporary folder, then the report
#   bash scripts/ci_regression.sh --update   # regenerate results/reference/ (commit it, saying why)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. "${LITESTAGE_VENV:-.venv}/bin/activate"
# 6 items per benchmark, 3 of them timed: the speedup of so few questions is noisy, hence 30%.
SPEED_TOL=${SPEED_TOL:-0.30}
GRID=(--models smollm2-135m --benches obqa,strategyqa --methods dense,unified --points 'unified=4'
      --limit 6 --timed 3 --rounds 2 --grid-cache off)
if [ "${1:-}" = "--update" ]; then
  out=results/reference
  rm -rf "$out"
else
  out=$(mktemp -d)
fi
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m pytest --benchmark-only tests/bench_grid.py -q -p no:cacheprovider \
  "${GRID[@]}" --grid-out "$out"
[ "${1:-}" = "--update" ] && exit 0
litestage-bench compare results/reference "$out" --speed-tol "$SPEED_TOL" | tee "$out/regression.md"
