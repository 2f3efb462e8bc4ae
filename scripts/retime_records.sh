#!/usr/bin/env bash
# Re-time result records made before interleaved timing (their `timing` has no `rounds`), in place:
# each record's own command again with --answers-from itself, so its answers are read back, not
# recomputed, and only its timed items run: dense and the method interleaved, --rounds 2. The run
# stops (and keeps the old record) if a timed item's outputs differ from the record, or the outputs or executed
# costs of one batch run again as the record's accuracy pass ran it.
#   bash scripts/retime_records.sh RECORD.json ...
# e.g. bash scripts/retime_records.sh results/baselines/smollm2-135m_obqa_*.json
# A record already timed in rounds is left alone, so a re-run continues. A record that cannot be re-timed
# does not stop the others: they are named at the end (exit 1). One thread: run two side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 RECORD.json ..." >&2; exit 2; }
# shellcheck disable=SC1091
. "${LITESTAGE_VENV:-.venv}/bin/activate"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
failed=()
for rec in "$@"; do
  cmd=$(python -m litestage_bench.records.retime "$rec") || { failed+=("$rec"); continue; }
  if [ -z "$cmd" ]; then echo "$rec: already timed in interleaved rounds"; continue; fi
  echo "re-timing $rec: $cmd"
  eval "$cmd" || failed+=("$rec")
done
[ ${#failed[@]} -eq 0 ] || { echo "not re-timed (the errors above say why): ${failed[*]}" >&2; exit 1; }
