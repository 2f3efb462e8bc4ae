#!/usr/bin/env bash
# LiteStage (issue 7): search a policy on the calibration split, then evaluate it on the evaluation
# items of the dense record in results/comparison/ (same items as the baselines), with and without
# its early exit.
#   bash scripts/litestage_eval.sh MODEL BENCH LIMIT TIMED TAG [SEARCH OPTIONS...]
# e.g. bash scripts/litestage_eval.sh smollm2-135m obqa 200 20 acc4 --tolerance 4 --step 2 --max-skip 16
# The policy goes to results/policies/MODEL_BENCH_litestage[-TAG].json (TAG "acc4" is the grid's
# default policy, MODEL_BENCH_litestage.json); records to results/litestage/. A finished policy or
# record is kept, so a re-run continues (and the search itself resumes from its candidate cache).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 5 ] || { echo "usage: $0 MODEL BENCH LIMIT TIMED TAG [SEARCH OPTIONS...]" >&2; exit 2; }
model=$1 bench=$2 limit=$3 timed=$4 tag=$5; shift 5
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
dense="results/comparison/${model}_${bench}_dense.json"
[ -f "$dense" ] || { echo "no dense record $dense: run scripts/first_comparison.sh $model $limit $bench" >&2; exit 2; }
suffix=$([ "$tag" = acc4 ] || echo "-$tag")
pol="results/policies/${model}_${bench}_litestage${suffix}.json"
mkdir -p results/litestage results/policies
[ -f "$pol" ] || litestage-bench search --method litestage --model "$model" --bench "$bench" "$@" --out "$pol"
# LITESTAGE_EXIT_ONLY=1: evaluate with the policy's early exit only (the ablation script's choice)
variants=("" --no-early-exit); [ "${LITESTAGE_EXIT_ONLY:-0}" != 1 ] || variants=("")
for variant in "${variants[@]}"; do
  rec="results/litestage/${model}_${bench}_litestage-${tag}${variant:+-no-exit}.json"
  [ -f "$rec" ] || litestage-bench run --model "$model" --bench "$bench" --limit "$limit" --timed "$timed" \
    --method litestage --policy "$pol" ${variant} --dense-record "$dense" --out "$rec"
done
