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
# repository has one; else it is left to the user (pip install -e ".[llama]", on a GPU box with
# CMAKE_ARGS="-DGGML_CUDA=on"): a CPU build of the pinned sdist here crashed in decode on the tiny
# test model, so setup does not build it unasked. Without it the q4_* evaluations fail, saying so.
LLAMA_WHEEL=$(ls ../shared/wheels/llama_cpp_python-0.3.36-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$LLAMA_WHEEL" ]; then
  .venv/bin/python -m pip install -q "$LLAMA_WHEEL"
  echo "llama-cpp-python installed from $LLAMA_WHEEL"
elif ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  echo "llama-cpp-python skipped: no prebuilt wheel in ../shared/wheels (build it: pip install -e '.[llama]')"
fi
echo "pmat installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
