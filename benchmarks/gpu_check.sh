#!/usr/bin/env bash
# The prepared GPU check (issue 15): run on a CUDA machine from the repository root, a few minutes long.
#
#   bash benchmarks/gpu_check.sh [OUT_FOLDER]
#
# Installs the project into .venv when it is missing (with the CUDA build of torch the machine's
# pip offers; set TORCH_SPEC to choose), runs benchmarks/gpu_check.py, and writes
# OUT_FOLDER/gpu_check.json (default benchmarks/results). Exits non-zero when any section fails.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results}"
PY="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PY" ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch}"
    .venv/bin/python -m pip install --quiet -e ".[cluster]"
    PY=.venv/bin/python
fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
exec "$PY" benchmarks/gpu_check.py --out "$OUT/gpu_check.json"
