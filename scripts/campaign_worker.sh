#!/usr/bin/env bash
# One core's share of a campaign: runs the next piece of LANE, then the next, until none is left.
#   bash scripts/campaign_worker.sh results/headline/campaign_qwen2.5-coder-1.5b.json records
# The pieces and their order are the campaign file's (`lane`, `command`, `after`); a piece that stopped
# part-way resumes from its checkpoint or search rows. Run one worker per lane, one thread each, and
# commit what lands (records, `*.partial.jsonl`, `results/search/`) and the re-rendered ledger.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 CAMPAIGN.json LANE" >&2; exit 2; }
# shellcheck disable=SC1091
. "${LITESTAGE_VENV:-.venv}/bin/activate"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
last=""
while command=$(python -m litestage_bench.studies.ledger "$1" --next "$2") && [ -n "$command" ]; do
  # a piece whose command ends without landing it would loop: stop instead
  [ "$command" != "$last" ] || { echo "[campaign] did not land: $command" >&2; exit 1; }
  echo "[campaign] $2: $command" >&2
  bash -c "$command"
  last=$command
done
echo "[campaign] $2: nothing left to run" >&2
