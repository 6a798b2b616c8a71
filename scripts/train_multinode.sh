#!/usr/bin/env bash
# Multi-node training through torchrun's static rendezvous. Run the same command on every node:
#   NNODES=4 NODE_RANK=<0..3> MASTER_ADDR=<node 0's address> MASTER_PORT=29500 NPROC_PER_NODE=8 \
#     scripts/train_multinode.sh --config configs/declip_vitb32_yfcc15m.yaml [--resume latest] [key=value ...]
# MODE=performance switches to performance mode (default: full). NNODES=1 runs on this node alone.
# DECLIP_DRY_RUN=1 prints the torchrun command instead of running it; see scripts/_launch.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
case "${MODE:-full}" in
  full|performance) ;;
  *) echo "$(basename "$0"): MODE must be full or performance, got '${MODE}'" >&2; exit 2 ;;
esac
declip_launch "${MODE:-full}" "${NPROC_PER_NODE:-8}" "${NNODES:-1}" "$@"
