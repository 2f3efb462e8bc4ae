#!/usr/bin/env bash
# Batch-B throughput for committed records, one record at a time, resumable:
#   bash scripts/retime_throughput.sh OUT_DIR RECORD.json ...   (BATCH=8 CHUNKS=4 CHUNK_ROUNDS=4 by default)
# e.g. bash scripts/retime_throughput.sh results/batch8 results/litestage/smollm2-135m_obqa_litestage-acc4.json
# Each record goes through `litestage-bench retime-throughput` (its own command, its answers checked)
# into OUT_DIR/NAME.json; a record whose copy is already there is left alone, so a re-run continues
# after the records that landed. A record that cannot be re-timed does not stop the others: they are
# named at the end (exit 1). One thread: run two side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 OUT_DIR RECORD.json ..." >&2; exit 2; }
out=$1; shift
# shellcheck disable=SC1091
. "${LITESTAGE_VENV:-.venv}/bin/activate"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
failed=()
for rec in "$@"; do
  if [ -f "$out/$(basename "$rec")" ]; then echo "$rec: already in $out"; continue; fi
  litestage-bench retime-throughput "$rec" --timing "batch=${BATCH:-8}" --chunks "${CHUNKS:-4}" \
    --chunk-rounds "${CHUNK_ROUNDS:-4}" --out-dir "$out" || failed+=("$rec")
done
[ ${#failed[@]} -eq 0 ] || { echo "not re-timed (the errors above say why): ${failed[*]}" >&2; exit 1; }
