#!/usr/bin/env bash
# Create .venv and install feddmmr with everything its tests use.
# torch is installed first as the CPU wheel when no torch is present: a bare `torch` requirement
# would pull a multi-GB CUDA build. Users with their own (CUDA) torch keep it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -d .venv ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,text,image,flower,dp,tensorboard,mlflow]"
