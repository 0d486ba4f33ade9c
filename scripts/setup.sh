#!/usr/bin/env bash
# Create .venv with pmat and its dev tools. Keeps a torch that the machine already
# has (a GPU box's own CUDA build); otherwise installs the CPU wheel torch==2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv --system-site-packages .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q torch==2.13.0
fi
.venv/bin/python -m pip install -q -e ".[dev]"
# llama.cpp evaluates the submitted GGUF: a prebuilt wheel when the wheel cache beside the
# repository has one, else pip builds the pinned sdist (the `llama` extra) here: a few minutes on
# 2 cores the first time, then pip's own wheel cache. With a GPU that torch sees and nvcc on the
# PATH it builds for CUDA (CMAKE_ARGS, when set, wins).
LLAMA_WHEEL=$(ls ../shared/wheels/llama_cpp_python-0.3.36-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$LLAMA_WHEEL" ]; then
  .venv/bin/python -m pip install -q "$LLAMA_WHEEL"
  echo "llama-cpp-python installed from $LLAMA_WHEEL"
elif .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  echo "llama-cpp-python already installed"
else
  GPU=$(.venv/bin/python -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
  if [ -z "${CMAKE_ARGS:-}" ] && [ "$GPU" = 1 ] && command -v nvcc >/dev/null; then export CMAKE_ARGS="-DGGML_CUDA=on"; fi
  echo "llama-cpp-python: building the pinned sdist (CMAKE_ARGS=${CMAKE_ARGS:-none}; a few minutes)"
  .venv/bin/python -m pip install -q -e ".[llama]" \
    || echo "llama-cpp-python could not be built: the q4_* evaluations will fail until it is installed" >&2
fi
echo "pmat installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
