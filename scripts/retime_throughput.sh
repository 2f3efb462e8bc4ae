#!/usr/bin/env bash
# Batch-B throughput for committed records, resumable:
#   bash scripts/retime_throughput.sh OUT_DIR RECORD.json ...   (BATCH=8 CHUNKS=4 CHUNK_ROUNDS=4 GROUP=1 by default)
# e.g. GROUP=4 bash scripts/retime_throughput.sh results/batch8 results/baselines/smollm2-135m_obqa_*-k*.json
# The records go through `litestage-bench retime-throughput` (its own command, answers checked) into
# OUT_DIR/NAME.json, GROUP at a time (records of one model, benchmark and items timed in the same chunk
# rounds against one dense: k records cost k + 1 solves per round instead of 2k). A record whose copy
# is already there is left alone, so a re-run continues after the records that landed. A group that
# cannot be re-timed does not stop the others: its records are named at the end (exit 1). One thread:
# run two side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 OUT_DIR RECORD.json ..." >&2; exit 2; }
out=$1; shift
# shellcheck disable=SC1091
. "${LITESTAGE_VENV:-.venv}/bin/activate"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
todo=()
for rec in "$@"; do
  if [ -f "$out/$(basename "$rec")" ]; then echo "$rec: already in $out"; else todo+=("$rec"); fi
done
group=${GROUP:-1}
failed=()
for ((i = 0; i < ${#todo[@]}; i += group)); do
  part=("${todo[@]:i:group}")
  litestage-bench retime-throughput "${part[@]}" --timing "batch=${BATCH:-8}" --chunks "${CHUNKS:-4}" \
    --chunk-rounds "${CHUNK_ROUNDS:-4}" --group "$group" --out-dir "$out" || failed+=("${part[@]}")
done
[ ${#failed[@]} -eq 0 ] || { echo "not re-timed (the errors above say why): ${failed[*]}" >&2; exit 1; }
