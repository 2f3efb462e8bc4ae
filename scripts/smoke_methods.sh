#!/usr/bin/env bash
# End-to-end check that every method runs through the CLI on a model and benchmarks (issue 8's
# "runs on both embedded models and all three benchmarks"): a tiny search (where the method has one)
# on a few calibration items, then `run` on 2 evaluation items (1 timed) compared with dense.
# Nothing is written under results/; a table of ok / FAILED per method x benchmark goes to stdout.
#   bash scripts/smoke_methods.sh MODEL [BENCH ...]     (default: obqa csqa strategyqa)
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 MODEL [BENCH ...]" >&2; exit 2; }
model=$1; shift
benches=("$@"); [ ${#benches[@]} -gt 0 ] || benches=(obqa csqa strategyqa)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
run=(--limit 2 --timed 1)
declare -A search=([litestage]="--limit 4 --timed 1 --max-skip 2 --step 2 --patience 1"
                   [adaskip]="--limit 4" [shortgpt]="--limit 4" [sleb]="--limit 2 --max-skip 1")
declare -A k=([unified]=2 [early_exit]=2 [skipdecode]=4 [adaskip]=4 [shortgpt]=2 [sleb]=1)
failed=0
printf '| model | bench | method | result | seconds |\n|---|---|---|---|---|\n'
for bench in "${benches[@]}"; do
  dense="$out/${bench}_dense.json"
  for method in dense unified early_exit skipdecode adaskip shortgpt sleb litestage; do
    start=$SECONDS status=ok
    {
      args=(); [ -z "${k[$method]:-}" ] || args=(--k "${k[$method]}")
      if [ -n "${search[$method]:-}" ]; then
        # shellcheck disable=SC2086  # the options are words
        litestage-bench search --method "$method" --model "$model" --bench "$bench" ${search[$method]} \
          --out "$out/${bench}_${method}_policy.json" && args+=(--policy "$out/${bench}_${method}_policy.json")
      fi &&
      if [ "$method" = dense ]; then
        litestage-bench run --model "$model" --bench "$bench" "${run[@]}" --out "$dense"
      else
        litestage-bench run --model "$model" --bench "$bench" "${run[@]}" --method "$method" "${args[@]}" \
          --dense-record "$dense" --out "$out/${bench}_${method}.json"
      fi
    } > "$out/log" 2>&1 || { status="FAILED: $(tail -n 1 "$out/log")"; failed=1; }
    printf '| %s | %s | %s | %s | %d |\n' "$model" "$bench" "$method" "$status" $((SECONDS - start))
  done
done
exit $failed
