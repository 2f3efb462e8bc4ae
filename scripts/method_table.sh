#!/usr/bin/env bash
# Table and Pareto plot of dense, LiteStage and the baselines for one model x benchmark, from the
# records in results/comparison (dense), results/litestage and results/baselines, with every record
# paired against LiteStage's accuracy-target record (McNemar p, answer agreement) when it exists.
#   bash scripts/method_table.sh MODEL BENCH   -> results/baselines/MODEL_BENCH.{md,png}
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 MODEL BENCH" >&2; exit 2; }
model=$1 bench=$2
shopt -s nullglob
records=(results/comparison/"${model}_${bench}"_dense.json results/litestage/"${model}_${bench}"_*.json
         results/baselines/"${model}_${bench}"_*.json)
[ ${#records[@]} -gt 1 ] || { echo "no LiteStage or baseline record for $model $bench" >&2; exit 2; }
vs=results/litestage/${model}_${bench}_litestage-acc4.json
vs_args=(); [ ! -f "$vs" ] || vs_args=(--vs "$vs")
litestage-bench report "${records[@]}" "${vs_args[@]}" \
  --markdown "results/baselines/${model}_${bench}.md" --plot "results/baselines/${model}_${bench}.png"
