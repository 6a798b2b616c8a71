#!/usr/bin/env bash
# GPU check for a session that has one CUDA device, self-contained (no network needed):
#  1. CPU smoke runs of the step benchmark, synthetic and loader-fed, so a broken install fails in seconds;
#  2. real ViT-B/32 DeCLIP steps at batch 128 on synthetic batches, in bf16 (the fast path) and in fp16 with the
#     gradient scaler: step time, FPS, peak memory;
#  3. every method of the family (issue 29: CLIP, SLIP, FILIP, DeFILIP, DeCLIP with the sigmoid loss) on the same
#     towers, batch and first precision: gpu_step_check_<method>.json;
#  4. patch dropout (issue 39): CLIP's step at model.vision.patch_dropout=0.5 (FLIP's) beside step 3's CLIP at 0:
#     gpu_step_check_clip_pd05.json and the step-rate ratio;
#  5. the S3 loader path (issue 39): benchmarks/s3_loader.py on the host cores -> s3_loader_gpu_host.md;
#  6. the loader-fed check (issue 9): the same bf16 run fed by the real input pipeline (all host cores as loader
#     workers, uint8 crops, augmentation on the GPU) on a generated manifest of $IMAGES 500x375 JPEGs; prints the
#     synthetic and loader-fed FPS and their ratio (target >= 0.90).
# Writes benchmarks/results/gpu_step_check_{bf16,fp16}.json, gpu_loader_check_bf16.json and gpu_loader_check.md
# and open_clip_step.md (our CLIP step vs open_clip's, issue 10) (or under $OUT_DIR). A few minutes on an
# H100/H200, most of it generating the JPEGs.
#   scripts/gpu_check.sh [extra gpu_step_check.py flags, e.g. --compile]
# Python packages the GPU machine may lack (open_clip_torch, ftfy, wcwidth, webdataset, braceexpand) are installed
# from wheels in $REPO/.whl when that folder exists; fill it beforehand on a machine with network access:
#   pip download --no-deps -d .whl open_clip_torch ftfy wcwidth webdataset braceexpand   (and carry .whl along)
# Tiny settings for a CPU dry run of the whole script: DEVICE=cpu QUICK=1 scripts/gpu_check.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-$([ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3)}
OUT_DIR=${OUT_DIR:-$REPO/benchmarks/results}
DEVICE=${DEVICE:-cuda}
IMAGES=${IMAGES:-5000}
BATCH=${BATCH:-128}
STEPS=${STEPS:-20}
LOADER_STEPS=${LOADER_STEPS:-100}
mkdir -p "$OUT_DIR"
cd "$REPO"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1

missing=$("$PYTHON" - <<'EOF'
import importlib.util
print(" ".join(p for m, p in [("open_clip", "open_clip_torch"), ("ftfy", "ftfy"), ("wcwidth", "wcwidth"),
                              ("webdataset", "webdataset"), ("braceexpand", "braceexpand")]
               if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  if [ -d "$REPO/.whl" ]; then
    echo "installing from $REPO/.whl: $missing"
    # shellcheck disable=SC2086
    "$PYTHON" -m pip install -q --no-index --no-deps --find-links "$REPO/.whl" $missing
  else
    echo "missing Python packages: $missing (and no $REPO/.whl to install them from; see the header)" >&2
    exit 2
  fi
fi

TINY=(--preset tiny-vit --batch-size 4 --image-size 32 --precision fp32 method.queue_size=64
      method.simsiam_proj_dim=32 method.simsiam_pred_dim=16)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
"$PYTHON" benchmarks/gpu_step_check.py --device cpu "${TINY[@]}" --steps 1 --warmup 1 > /dev/null
"$PYTHON" benchmarks/gpu_step_check.py --device cpu "${TINY[@]}" --steps 1 --warmup 1 --data manifest \
  --images 16 --num-workers 2 > /dev/null
for m in clip slip filip defilip; do  # each method's step runs at all (tiny, CPU) before any GPU time is spent
  "$PYTHON" benchmarks/gpu_step_check.py --device cpu "${TINY[@]}" --steps 1 --warmup 1 method.name=$m \
    method.simclr_hidden_dim=32 method.simclr_out_dim=16 > /dev/null
done
"$PYTHON" benchmarks/gpu_step_check.py --device cpu "${TINY[@]}" --steps 1 --warmup 1 method.name=clip \
  model.vision.patch_dropout=0.5 > /dev/null  # issue 39: the patch-dropout step runs at all
echo "CPU smoke runs passed"
if [ "$DEVICE" = cuda ] && "$PYTHON" -c "import pytest" 2>/dev/null; then
  # the device stage on CUDA == on the CPU; a CUDA step makes no host sync outside logging (set_sync_debug_mode)
  "$PYTHON" -m pytest -p no:cacheprovider -q tests/test_device_augment.py tests/test_no_host_sync.py -k "cuda"
fi

if [ "${QUICK:-0}" = 1 ]; then  # a dry run of the GPU part's plumbing with tiny settings
  MODEL=("${TINY[@]}"); IMAGES=64; STEPS=2; LOADER_STEPS=4; PRECISIONS=(fp32)
else
  MODEL=(--batch-size "$BATCH"); PRECISIONS=(bf16 fp16)
fi
for precision in "${PRECISIONS[@]}"; do
  "$PYTHON" benchmarks/gpu_step_check.py --device "$DEVICE" "${MODEL[@]}" --precision "$precision" \
    --steps "$STEPS" --warmup 5 --json "$OUT_DIR/gpu_step_check_${precision}.json" "$@" | tail -n 1
done

# issue 29: the family beside DeCLIP, same model, batch and precision (the method's own heads at their reference sizes)
P=${PRECISIONS[0]}
for label in clip slip filip defilip declip_sigmoid; do
  case $label in declip_sigmoid) extra=(method.name=declip method.contrastive_loss=sigmoid) ;;
                 *) extra=(method.name=$label) ;; esac
  "$PYTHON" benchmarks/gpu_step_check.py --device "$DEVICE" "${MODEL[@]}" --precision "$P" --steps "$STEPS" \
    --warmup 3 --json "$OUT_DIR/gpu_step_check_${label}.json" "${extra[@]}" "$@" | tail -n 1
done

# issue 39: patch dropout 0.5 vs none: CLIP's step rate beside the clip run above (same towers, batch, precision)
"$PYTHON" benchmarks/gpu_step_check.py --device "$DEVICE" "${MODEL[@]}" --precision "$P" --steps "$STEPS" \
  --warmup 3 --json "$OUT_DIR/gpu_step_check_clip_pd05.json" method.name=clip model.vision.patch_dropout=0.5 "$@" \
  | tail -n 1
"$PYTHON" -c 'import json, sys; a, b = (json.load(open(p))["fps"] for p in sys.argv[1:])
print(f"patch dropout 0.5: {b:.1f} images/s vs {a:.1f} at 0 (x{b / a:.2f} the step rate)")' \
  "$OUT_DIR/gpu_step_check_clip.json" "$OUT_DIR/gpu_step_check_clip_pd05.json"

# issue 39: the S3 loader path on this machine's host cores: the loader from s3:// shards on a local S3 server
# (moto, 127.0.0.1) with 20 ms added per request vs the same shards on disk, by workers and readahead. Needs
# moto[server] and s3fs (the dev extra; carry their wheels in .whl like the others); skipped without them.
if "$PYTHON" -c "import moto, s3fs" 2>/dev/null; then
  if [ "${QUICK:-0}" = 1 ]; then S3_ARGS=(--images 32 --samples 16 --workers 1 --readahead 0,8 --repeats 1)
  else S3_ARGS=(--images 384 --samples 256 --workers 2,4,8 --readahead 0,8,32 --repeats 2); fi
  "$PYTHON" benchmarks/s3_loader.py "${S3_ARGS[@]}" --out "$OUT_DIR/s3_loader_gpu_host.md" | tail -n 12
else
  echo "S3 loader path skipped: moto[server] and s3fs are not installed (pip install -e '.[dev]')"
fi

# loader-fed vs synthetic, same model, precision and batch; synthetic measured again right before, same settings
"$PYTHON" benchmarks/gpu_step_check.py --device "$DEVICE" "${MODEL[@]}" --precision "$P" --steps "$LOADER_STEPS" \
  --warmup 5 --json "$OUT_DIR/gpu_loader_check_synthetic_${P}.json" "$@" | tail -n 1
"$PYTHON" benchmarks/gpu_step_check.py --device "$DEVICE" "${MODEL[@]}" --precision "$P" --steps "$LOADER_STEPS" \
  --warmup 5 --data manifest --images "$IMAGES" --num-workers -1 \
  --json "$OUT_DIR/gpu_loader_check_${P}.json" "$@" | tail -n 1
"$PYTHON" - "$OUT_DIR/gpu_loader_check_synthetic_${P}.json" "$OUT_DIR/gpu_loader_check_${P}.json" \
  "$OUT_DIR/gpu_loader_check.md" "$IMAGES" <<'EOF'
import json, os, sys
syn, fed = (json.load(open(p)) for p in sys.argv[1:3])
ratio = fed["fps"] / syn["fps"]
verdict = "PASS" if ratio >= 0.90 else "FAIL"
text = f"""# Loader-fed vs synthetic-batch FPS (scripts/gpu_check.sh)

Device: {syn['device']}, torch {syn['torch']}, {os.cpu_count()} host cores; {syn['preset']} DeCLIP, {syn['precision']},
batch {syn['batch_size']}, {fed['timed_steps']} timed steps each (loader-fed after {fed['warmup_steps']} warm-up steps).
Loader-fed: {fed['num_workers']} workers on {sys.argv[4]} generated 500x375 JPEGs (uint8 crops on the CPU, augmentation
and normalisation on the device, next batch copied during the step).

| run | FPS (images/s) | step (ms, mean) | data wait |
|---|---|---|---|
| synthetic batch | {syn['fps']:.1f} | {1000 * syn['step_time_s']['mean']:.1f} | - |
| loader-fed | {fed['fps']:.1f} | {1000 * fed['step_time_s']['mean']:.1f} | {100 * fed['data_wait']:.0f}% |

Ratio loader-fed / synthetic: {ratio:.3f} (target >= 0.90): {verdict}
"""
open(sys.argv[3], "w").write(text)
print(text)
EOF

# issue 10: our CLIP step vs open_clip's own on the same towers and batch, in one process (target ratio <= 1.00)
if [ "${QUICK:-0}" = 1 ]; then
  "$PYTHON" benchmarks/open_clip_step.py --device "$DEVICE" --preset tiny-vit --batch 8 --steps 2 \
    model.vision.image_size=32 | grep ratio
else
  "$PYTHON" benchmarks/open_clip_step.py --device "$DEVICE" --preset vit-b-32 --batch "$BATCH" --steps "$STEPS" \
    --precision bf16 --out "$OUT_DIR/open_clip_step.md" | grep ratio
fi

# issue 10: host syncs per training step outside logging (set_sync_debug_mode), unfused vs fused AdamW
if [ "$DEVICE" = cuda ]; then
  "$PYTHON" benchmarks/sync_count.py --device cuda --out "$OUT_DIR/sync_count_cuda.md" | tail -n 8
fi
