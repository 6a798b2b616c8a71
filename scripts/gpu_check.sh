#!/usr/bin/env bash
# GPU check for a session that has one CUDA device: a few real ViT-B/32 DeCLIP steps at batch 128, in bf16
# (the fast path) and in fp16 with the gradient scaler, printing step time, FPS and peak memory for each, plus
# one 2-step CPU smoke run first so a broken install fails in seconds, not after the GPU warm-up.
# Writes benchmarks/results/gpu_step_check_{bf16,fp16}.json (or $OUT_DIR/...). About 2 minutes on an H100.
#   scripts/gpu_check.sh [extra gpu_step_check.py flags, e.g. --compile]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-$([ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3)}
OUT_DIR=${OUT_DIR:-$REPO/benchmarks/results}
mkdir -p "$OUT_DIR"
cd "$REPO"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PYTHON" benchmarks/gpu_step_check.py --device cpu --preset tiny-vit --batch-size 4 --steps 1 --warmup 1 \
  --image-size 32 --precision fp32 method.queue_size=64 method.simsiam_proj_dim=32 > /dev/null
for precision in bf16 fp16; do
  "$PYTHON" benchmarks/gpu_step_check.py --precision "$precision" --batch-size 128 --steps 20 --warmup 5 \
    --json "$OUT_DIR/gpu_step_check_${precision}.json" "$@" | tail -n 1
done
