#!/usr/bin/env bash
# Full training (train.mode=full: evaluation and checkpoints as configured)
# on one device (pick it with CUDA_VISIBLE_DEVICES), through torchrun.
#   scripts/train_full_1p.sh --config configs/declip_vitb32_yfcc15m.yaml [--resume latest] [key=value ...]
# DECLIP_DRY_RUN=1 prints the torchrun command instead of running it; see scripts/_launch.sh for the environment.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
declip_launch full 1 1 "$@"
