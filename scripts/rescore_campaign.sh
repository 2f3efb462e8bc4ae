#!/usr/bin/env bash
# A campaign benchmark's landed float32 records re-scored by the benchmark's chosen answer rule, on the
# same generations (no model run), and their interim table:
#   bash scripts/rescore_campaign.sh MODEL BENCH RULE|POLICY.json
#   bash scripts/rescore_campaign.sh qwen2.5-coder-1.5b obqa letter
# RULE, or the rule a search chose (its policy's answer_rule_choice), e.g.
#   bash scripts/rescore_campaign.sh qwen2.5-coder-1.5b csqa results/policies/v2/qwen2.5-coder-1.5b_csqa_litestage-acc4.json
# Reads results/large/MODEL_BENCH_*_float32.json (timed records) and results/large/accuracy/ (records
# timed later in a group); writes results/large/RULE/ and results/large/RULE/accuracy/, then
# results/large/RULE/table_BENCH.md. Re-run it whenever a record of the benchmark lands.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 3 ] || { echo "usage: $0 MODEL BENCH RULE|POLICY.json" >&2; exit 2; }
model=$1 bench=$2 rule=$3
# shellcheck disable=SC1091
. "${LITESTAGE_VENV:-.venv}/bin/activate"
if [[ $rule == *.json ]]; then
  rule=$(python - "$rule" <<'EOF'
import json, sys
try:
    policy = json.load(open(sys.argv[1]))
    print((policy.get("answer_rule_choice") or {}).get("rule") or policy["reasoner_config"]["answer_rule"])
except (OSError, ValueError, KeyError, TypeError) as err:
    sys.exit(f"rescore_campaign: error: {sys.argv[1]} names no answer rule ({err})")
EOF
)
fi
dense=results/large/${model}_${bench}_dense_float32.json
[ -f "$dense" ] || { echo "rescore_campaign: error: no dense record $dense" >&2; exit 2; }
out=results/large/$rule
python -m litestage_bench.studies.rescore "$dense" --answer-rule "$rule" --out-dir "$out"
shopt -s nullglob
timed=() accuracy=()
for rec in results/large/${model}_${bench}_*_float32.json; do
  [ "$rec" = "$dense" ] || timed+=("$rec")
done
accuracy=(results/large/accuracy/${model}_${bench}_*_float32.json)
rescored_dense=$out/$(basename "$dense")
if [ ${#timed[@]} -gt 0 ]; then
  python -m litestage_bench.studies.rescore "${timed[@]}" --answer-rule "$rule" --dense-record "$rescored_dense" --out-dir "$out"
fi
if [ ${#accuracy[@]} -gt 0 ]; then
  python -m litestage_bench.studies.rescore "${accuracy[@]}" --answer-rule "$rule" --dense-record "$rescored_dense" \
    --out-dir "$out/accuracy"
fi
shown=("$rescored_dense")
for rec in "$out"/${model}_${bench}_*_float32.json "$out"/accuracy/${model}_${bench}_*_float32.json; do
  [ "$rec" = "$rescored_dense" ] || shown+=("$rec")
done
litestage-bench report "${shown[@]}" --markdown "$out/table_${bench}.md" >/dev/null
echo "wrote $out/table_${bench}.md"
