#!/usr/bin/env bash
# Full training (train.mode=full: evaluation and checkpoints as configured)
# on 8 devices on this node (NPROC_PER_NODE=N for another count), through torchrun.
#   scripts/train_full_8p.sh --config configs/declip_vitb32_yfcc15m.yaml [--resume latest] [key=value ...]
# DECLIP_DRY_RUN=1 prints the torchrun command instead of running it; see scripts/_launch.sh for the environment.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
declip_launch full "${NPROC_PER_NODE:-8}" 1 "$@"
