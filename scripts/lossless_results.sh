#!/usr/bin/env bash
# The lossless records (results/lossless/): for one model and benchmark, the draft search of both
# lossless methods (one measurement, cached, read by the second search), then a run of each beside
# the committed dense record (same items). Resumable: finished policies and records are kept, an
# interrupted run continues from its checkpoint.
#   usage: bash scripts/lossless_results.sh MODEL BENCH LIMIT TIMED [RANKING_POLICY]
# RANKING_POLICY: the LiteStage policy whose sub-layer ranking the drafts take (default: the
# committed results/policies/MODEL_BENCH_litestage.json). Run with OMP_NUM_THREADS=1 beside a second job.
set -euo pipefail
model=$1 bench=$2 limit=$3 timed=$4
ranking=${5:-results/policies/${model}_${bench}_litestage.json}
for method in selfspec litestage-spec; do
  policy=results/policies/${model}_${bench}_${method}.json
  [ -f "$policy" ] || litestage-bench search --model "$model" --bench "$bench" --method "$method" \
    --ranking-from "$ranking" --limit 10 --timed 10 --out "$policy"
done
for method in selfspec litestage-spec; do
  out=results/lossless/${model}_${bench}_${method}.json
  [ -f "$out" ] || litestage-bench run --model "$model" --bench "$bench" --method "$method" \
    --policy "results/policies/${model}_${bench}_${method}.json" --limit "$limit" --timed "$timed" \
    --dense-record "results/comparison/${model}_${bench}_dense.json" --out "$out"
done
