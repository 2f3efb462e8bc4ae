#!/usr/bin/env bash
# Baseline sweeps (issue 8): each baseline at its budget points, on the same evaluation items as
# the dense record of results/comparison/ (the dense record must exist: scripts/first_comparison.sh).
#   bash scripts/baseline_sweep.sh MODEL BENCH LIMIT TIMED METHOD=K[,K...] [METHOD=K ...]
# e.g. bash scripts/baseline_sweep.sh smollm2-135m obqa 200 20 unified=4,8 shortgpt=4 adaskip=8
# Methods that calibrate (adaskip, shortgpt, sleb) search first on the calibration split; their
# policy goes to results/policies/MODEL_BENCH_METHOD.json (the file the grid uses). Records go to
# results/baselines/; a finished record or policy is kept, so a re-run continues. One thread per process.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 5 ] || { echo "usage: $0 MODEL BENCH LIMIT TIMED METHOD=K[,K...] ..." >&2; exit 2; }
model=$1 bench=$2 limit=$3 timed=$4; shift 4
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
dense="results/comparison/${model}_${bench}_dense.json"
[ -f "$dense" ] || { echo "no dense record $dense: run scripts/first_comparison.sh $model $limit $bench" >&2; exit 2; }
mkdir -p results/baselines results/policies
removals() { python -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["removal_order"]))' "$1"; }
for point in "$@"; do
  method=${point%%=*} ks=${point#*=}
  [ "$method" != "$point" ] || { echo "bad point '$point': write METHOD=K[,K...]" >&2; exit 2; }
  policy=()
  case $method in
    adaskip|shortgpt|sleb)
      pol="results/policies/${model}_${bench}_${method}.json"
      # sleb finds removals one at a time (each round L-2 NLL passes over the calibration texts):
      # search only as many as the largest k asked for, on SLEB_LIMIT calibration questions (default 10;
      # one pass over the stage texts of 50 questions, 31.5k tokens, took about a minute on 1 CPU thread)
      most=$(tr ',' '\n' <<<"$ks" | sort -n | tail -n 1)
      extra=(); [ "$method" != sleb ] || extra=(--max-skip "$most" --limit "${SLEB_LIMIT:-10}")
      # a SLEB policy with fewer removals than asked for is extended (the search continues its order)
      if [ -f "$pol" ] && { [ "$method" != sleb ] || [ "$(removals "$pol")" -ge "$most" ]; }; then :; else
        litestage-bench search --method "$method" --model "$model" --bench "$bench" "${extra[@]}" --out "$pol"
      fi
      policy=(--policy "$pol");;
  esac
  for k in ${ks//,/ }; do
    rec="results/baselines/${model}_${bench}_${method}-k${k}.json"
    [ -f "$rec" ] || litestage-bench run --model "$model" --bench "$bench" --limit "$limit" --timed "$timed" \
      --method "$method" --k "$k" "${policy[@]}" --dense-record "$dense" --out "$rec"
  done
done
