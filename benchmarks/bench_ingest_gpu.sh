#!/usr/bin/env bash
# GPU variant of bench_ingest.py: ViT-B-32 with random weights on CUDA, in one call.
# Usage: benchmarks/bench_ingest_gpu.sh [OUT_JSON]; writes the table to stdout and JSON to OUT_JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${1:-bench_ingest_gpu.json}"
nproc
grep -m1 "model name" /proc/cpuinfo || true
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PYTHON" benchmarks/bench_ingest.py --model ViT-B-32 --device cuda --precision auto \
    --videos 32 --seconds 20 --size 640x360 --batch-size 64 \
    --workers "$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))" --out "$OUT"
