# Shared by the train_*.sh launch scripts (sourced, not run). Builds one torchrun command:
#   <python> -m torch.distributed.run <torchrun args> -m declip.cli train --config FILE [--resume X] <mode> <key=value...>
# Environment:
#   PYTHON          interpreter with declip installed (default: the repo's .venv/bin/python, else python3)
#   NPROC_PER_NODE  processes (devices) per node, where the script allows it
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   multi-node rendezvous (train_multinode.sh only)
#   DECLIP_DRY_RUN=1  print the command instead of running it
# Later key=value arguments win over earlier ones, so the user's overrides come last.

_declip_die() { echo "$(basename "$0"): $*" >&2; exit 2; }

_declip_usage() {
  cat <<USAGE
usage: $(basename "$0") --config FILE [--resume latest|PATH] [key=value ...]
  e.g. $(basename "$0") --config configs/declip_vitb32_yfcc15m.yaml data.path=/data/yfcc.json train.batch_size=128
USAGE
}

# declip_launch MODE NPROC_PER_NODE NNODES [script arguments...]
declip_launch() {
  local mode=$1 nproc=$2 nnodes=$3
  shift 3
  local repo config="" resume=() extra=()
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  while [ $# -gt 0 ]; do
    case "$1" in
      --config) [ $# -ge 2 ] || _declip_die "--config needs a file"; config=$2; shift 2 ;;
      --config=*) config=${1#--config=}; shift ;;
      --resume) [ $# -ge 2 ] || _declip_die "--resume needs 'latest' or a path"; resume=(--resume "$2"); shift 2 ;;
      --resume=*) resume=(--resume "${1#--resume=}"); shift ;;
      -h|--help) _declip_usage; exit 0 ;;
      *=*) extra+=("$1"); shift ;;
      *) _declip_usage >&2; _declip_die "unexpected argument '$1' (expected --config FILE, --resume X or key=value)" ;;
    esac
  done
  [ -n "$config" ] || { _declip_usage >&2; _declip_die "--config FILE is required"; }
  [ -f "$config" ] || _declip_die "config file not found: $config"
  [[ "$nproc" =~ ^[1-9][0-9]*$ ]] || _declip_die "NPROC_PER_NODE must be a positive integer, got '$nproc'"

  local python=${PYTHON:-}
  if [ -z "$python" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python=python3; fi
  fi

  local torchrun=()
  [[ "$nnodes" =~ ^[1-9][0-9]*$ ]] || _declip_die "NNODES must be a positive integer, got '$nnodes'"
  if [ "$nnodes" -gt 1 ]; then
    [ -n "${MASTER_ADDR:-}" ] || _declip_die "NNODES=$nnodes needs MASTER_ADDR (the address of the node with NODE_RANK=0)"
    [ -n "${NODE_RANK:-}" ] || _declip_die "NNODES=$nnodes needs NODE_RANK (0 .. $((nnodes - 1)), one per node)"
    torchrun=(--nnodes "$nnodes" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR"
              --master_port "${MASTER_PORT:-29500}" --nproc_per_node "$nproc")
  else
    torchrun=(--standalone --nproc_per_node "$nproc")  # single node: torchrun picks a free port itself
  fi

  local mode_args=()
  case "$mode" in
    full) mode_args=(train.mode=full) ;;
    performance)
      # 1000 steps as the reference port's performance scripts; no eval or checkpoints; a separate output folder so
      # timing runs never append to a real run's logs. Both can still be overridden after --config.
      local name
      name=$(basename "$config"); name=${name%.*}
      mode_args=(train.mode=performance train.steps=1000
                 "train.output_dir=checkpoint/performance/${name}_$((nnodes * nproc))p") ;;
    *) _declip_die "internal: unknown mode '$mode'" ;;
  esac

  local cmd=("$python" -m torch.distributed.run "${torchrun[@]}" -m declip.cli train --config "$config"
             ${resume[@]+"${resume[@]}"} "${mode_args[@]}" ${extra[@]+"${extra[@]}"})
  if [ -n "${DECLIP_DRY_RUN:-}" ]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
  fi
  exec "${cmd[@]}"
}
