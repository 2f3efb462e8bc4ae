#!/usr/bin/env bash
# The CUDA checks on a GPU machine that has torch but no network and no room for the embedded
# models' weights (the project's lent GPU machine: python 3.12, its own torch and transformers).
#   bash scripts/gpu_check.sh prepare DIR    here, online: wheels of what the suite needs beyond that
#                                            machine's packages (Python 3.12), SmolLM2's tokenizer, and
#                                            a tiny random llama with that tokenizer (DIR/tiny-llama)
#   bash scripts/gpu_check.sh run DIR OUT    there: the gpu-marked tests (CUDA vs CPU, tests/test_cuda.py)
#                                            and `tox -e gpu`'s grid script on the tiny model: every
#                                            method, searches included, on CUDA in bfloat16
# The tiny model checks the code path, not accuracy or speed: its weights are random.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: gpu_check.sh prepare DIR | run DIR OUT} dir=${2:?DIR}

if [ "$mode" = prepare ]; then
  mkdir -p "$dir/whl"
  # the transformers minor the suite is tested with, and what the GPU image lacks
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d "$dir/whl" transformers==5.23.0 gguf==0.19.0 nltk==3.10.4 defusedxml
  python -m pip wheel -q --no-deps -w "$dir/whl" rouge-score==0.1.2  # an sdist only: built here
  python - "$dir" <<'EOF'
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from litestage_bench.engine.models import load_model
out = sys.argv[1]
tok = load_model("smollm2-135m", dtype="float32").tokenizer
tok.save_pretrained(f"{out}/tokenizer")
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
LlamaForCausalLM(cfg).save_pretrained(f"{out}/tiny-llama")
tok.save_pretrained(f"{out}/tiny-llama")
EOF
  du -sh "$dir"
  exit 0
fi

[ "$mode" = run ] || { echo "usage: gpu_check.sh prepare DIR | run DIR OUT" >&2; exit 2; }
out=${3:?OUT}
mkdir -p "$out"
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/litestage-site "$dir"/whl/*.whl
export PYTHONPATH="/tmp/litestage-site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi -L
python -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
tests_rc=0
LITESTAGE_TEST_TOKENIZER="$dir/tokenizer" python -m pytest -m gpu -q -rs tests || tests_rc=$?
# the grid script as `tox -e gpu` runs it, on the tiny model only, with budgets that fit 4 layers
grid_rc=0
LITESTAGE_GPU_INSTALL=0 LITESTAGE_GPU_BASE_MODELS='' LITESTAGE_GPU_MODELS="$dir/tiny-llama" \
  bash scripts/gpu_grid.sh --benches "${GPU_CHECK_BENCHES:-obqa}" --limit 8 --timed 3 --batch-size 4 --search-limit 4 \
  --points 'unified=2;early_exit=1;skipdecode=2;adaskip=2;shortgpt=1;sleb=1' \
  --grid-out "$out/grid" --grid-cache "$out/cache" --policy-dir "$out/policies" || grid_rc=$?
echo "gpu_check: gpu tests exit $tests_rc, gpu grid exit $grid_rc"
[ "$tests_rc" = 0 ] && [ "$grid_rc" = 0 ]
