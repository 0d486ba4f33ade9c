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
echo "pmat installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
