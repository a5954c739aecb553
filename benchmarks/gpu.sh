#!/usr/bin/env bash
# GPU benchmarks: run on a machine with a CUDA GPU (e.g. the device tool), from the repo root.
#   bash benchmarks/gpu.sh   # writes benchmarks/results/meta_training_gpu.json and scoring_gpu.json
# On a machine without a GPU it says so and exits 0, so that it can sit in any script.
# Scoring: the engine (adaptation, catalogue GEMM, running top K) on the GPU over 100,000
# items; the end-to-end stage and its RSS stay on the CPU (--rss-users "").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "benchmarks/gpu.sh: no CUDA GPU visible to torch ($("$PY" -c 'import torch; print(torch.__version__)')); nothing to run"
    exit 0
fi
"$PY" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0))'
"$PY" benchmarks/meta_training.py --device cuda --out benchmarks/results/meta_training_gpu.json
"$PY" benchmarks/scoring.py --device cuda --items 100000 --users 65536 --loss sampled \
    --rss-users "" --out benchmarks/results/scoring_gpu.json
