#!/usr/bin/env bash
# The first skipping comparison (issue 6): dense, then two static whole-layer plans (about 25% and
# 50% of layers skipped, results/plans/) compared with it on the same items. One thread per process.
#   bash scripts/first_comparison.sh MODEL LIMIT BENCH [BENCH ...]
# Records go to results/comparison/; a finished record is kept, so a re-run continues.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1 limit=$2; shift 2
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
out=results/comparison
mkdir -p "$out"
for bench in "$@"; do
  dense="$out/${model}_${bench}_dense.json"
  [ -f "$dense" ] || litestage-bench run --model "$model" --bench "$bench" --limit "$limit" --out "$dense"
  for plan in skip25 skip50; do
    rec="$out/${model}_${bench}_plan-${plan}.json"
    [ -f "$rec" ] || litestage-bench run --model "$model" --bench "$bench" --limit "$limit" --method plan \
      --policy "results/plans/${model}_${plan}.json" --dense-record "$dense" --out "$rec"
  done
done
