#!/usr/bin/env bash
# LiteStage ablations (issue 7) on one model x benchmark, beside the accuracy-target search of
# scripts/litestage_eval.sh (stage-wise, sub-layer, cosine ranking, with and without early exit) and
# the agreement-target one: a uniform budget, whole-layer granularity, the iterative ranking.
#   bash scripts/litestage_ablations.sh MODEL BENCH LIMIT TIMED
# Each ablation is searched with the same target (4 points) and evaluated with its early exit only
# (the exit ablation is the acc4 pair). Then one table of all LiteStage records of MODEL x BENCH:
# results/litestage/MODEL_BENCH_ablations.md. Finished policies and records are kept (re-run continues).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 4 ] || { echo "usage: $0 MODEL BENCH LIMIT TIMED" >&2; exit 2; }
model=$1 bench=$2 limit=$3 timed=$4
run() { LITESTAGE_EXIT_ONLY=1 bash scripts/litestage_eval.sh "$model" "$bench" "$limit" "$timed" "$@"; }
bash scripts/litestage_eval.sh "$model" "$bench" "$limit" "$timed" acc4 --tolerance 4 --step 2 --max-skip 16
run acc4-uniform --tolerance 4 --step 2 --max-skip 16 --uniform
run acc4-layer --tolerance 4 --max-skip 8 --granularity layer  # 8 layers = 16 sub-layers
run acc4-iterative --tolerance 4 --step 2 --max-skip 16 --ranking iterative
shopt -s nullglob
litestage-bench report "results/comparison/${model}_${bench}_dense.json" results/litestage/"${model}_${bench}"_litestage-*.json \
  --vs "results/litestage/${model}_${bench}_litestage-acc4.json" --markdown "results/litestage/${model}_${bench}_ablations.md"
