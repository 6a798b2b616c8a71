"""Process-group helpers that also work without one, so every method runs unchanged on 1 CPU or 64 GPUs.

Launch sources, in order:
- torchrun (single node, or multi-node with --nnodes/--node_rank or a c10d rendezvous): RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR and MASTER_PORT all come from torchrun.
- SLURM, one task per device (``srun python -m declip.cli train ...``): SLURM_PROCID, SLURM_NTASKS,
  SLURM_LOCALID. SLURM does not name a rendezvous host, so MASTER_ADDR is taken from the environment, or
  else the first host of the job's node list (``scontrol show hostnames``), or 127.0.0.1 on a one-node job;
  MASTER_PORT defaults to a port derived from SLURM_JOB_ID so two jobs sharing a node do not collide.

Backend: torch's default for the device type (declip.device.backend_for). The group's timeout
(``train.dist_timeout_s``) must outlast the longest wait at a barrier: rank 0 evaluates alone while the other
ranks wait, and NCCL's 10-minute default would abort a run during a long ImageNet evaluation.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .device import backend_for


# torch 2.14 renamed the single-tensor collectives; the old names remain (deprecated) back to torch 2.4
_all_gather_single = getattr(dist, "all_gather_single", None) or getattr(dist, "all_gather_into_tensor", None)
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or getattr(dist, "reduce_scatter_tensor", None)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class LaunchError(RuntimeError):
    """The launch environment does not say how to reach the other processes."""


def env_dist_info(env: dict | None = None) -> DistInfo:
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                        int(env.get("LOCAL_WORLD_SIZE", 1)))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1:
        per_node = env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0].split(",")[0]
        return DistInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                        int(per_node) if per_node.isdigit() else 1)
    return DistInfo()


def slurm_first_host(nodelist: str) -> str | None:
    """First host of a SLURM node list (``node[03-05,09]`` -> ``node03``) via ``scontrol``; None without it."""
    scontrol = shutil.which("scontrol")
    if scontrol is None or not nodelist:
        return None
    try:
        out = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=60, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out else None


def rendezvous_env(env: dict | None = None) -> tuple[str, str]:
    """(MASTER_ADDR, MASTER_PORT) for this launch, written back into ``env`` (os.environ by default)."""
    env = os.environ if env is None else env
    slurm = "RANK" not in env and "SLURM_PROCID" in env
    if "MASTER_ADDR" not in env:
        nnodes = int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1"))) if slurm else 1
        if nnodes <= 1:
            addr = "127.0.0.1"
        else:
            nodelist = (env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
                        or env.get("SLURM_NODELIST", ""))
            addr = slurm_first_host(nodelist)
            if addr is None:
                raise LaunchError(
                    f"SLURM launch over {nnodes} nodes: MASTER_ADDR is not set and the first host of "
                    f"SLURM_NODELIST={nodelist!r} could not be found with `scontrol show hostnames`; export "
                    "MASTER_ADDR (the first node's address) in the sbatch script, e.g. "
                    "MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)")
        env["MASTER_ADDR"] = addr
    if "MASTER_PORT" not in env:
        job = env.get("SLURM_JOB_ID", "") if slurm else ""
        env["MASTER_PORT"] = str(20000 + int(job) % 20000) if job.isdigit() else "29500"
    return env["MASTER_ADDR"], env["MASTER_PORT"]


def init_distributed(device: torch.device, timeout_s: float = 3600.0) -> DistInfo:
    """Initialise the default process group when launched with several processes; no-op otherwise. The
    backend is torch's default for the device type (gloo on the CPU, nccl on CUDA, xccl on XPU, ...)."""
    info = env_dist_info()
    if info.world_size > 1 and not dist.is_initialized():
        rendezvous_env()
        kwargs = {}
        if device.type != "cpu":
            getattr(torch, device.type).set_device(device)
            kwargs["device_id"] = device  # barriers know their device, no guessing
        dist.init_process_group(backend=backend_for(device), rank=info.rank, world_size=info.world_size,
                                timeout=timedelta(seconds=timeout_s), **kwargs)
    return info


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def barrier() -> None:
    if is_dist():
        dist.barrier()


_host_group = None  # any_rank's CPU group, created on first use


def cleanup() -> None:
    global _host_group
    if is_dist():
        dist.destroy_process_group()  # the host group with it
    _host_group = None


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gathered gradient over ranks and returns this rank's slice.

    Every rank's loss reads every rank's features, so the gradient for this rank's rows is the sum of what
    all ranks' losses send back. Written here (not torch.distributed.nn.functional.all_gather, deprecated
    in torch 2.14) with public collectives: reduce-scatter on NCCL, all-reduce + slice on gloo, which has
    no reduce-scatter.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        out = x.new_empty((world * x.shape[0], *x.shape[1:]))
        _all_gather_single(out, x.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        grad = grad.contiguous()
        n = grad.shape[0] // world
        if dist.get_backend() == dist.Backend.NCCL:
            mine = grad.new_empty((n, *grad.shape[1:]))
            _reduce_scatter_single(mine, grad)
            return mine
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad[rank * n:(rank + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (equal shapes on every rank), differentiably: the
    backward sums every rank's gradient for this rank's slice, which with DDP's gradient averaging makes
    the mean of the per-rank losses train exactly like the single-process loss on the whole batch."""
    if not is_dist() or get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if not is_dist() or get_world_size() == 1:
        return x
    out = x.new_empty((get_world_size() * x.shape[0], *x.shape[1:]))
    _all_gather_single(out, x.contiguous())
    return out


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if is_dist():
        values = values.clone()
        dist.all_reduce(values)
    return values


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any: a host-side flag (a preemption signal) agreed on
    every step without touching the accelerator. It goes through a CPU (gloo) group: an all-reduce on the
    training device would make the host wait for the device's queue to drain, every step."""
    if not is_dist() or get_world_size() == 1:
        return flag
    global _host_group
    if _host_group is None:  # every rank creates it at the same call (the first step)
        _host_group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    value = torch.tensor([float(flag)])
    dist.all_reduce(value, group=_host_group)
    return bool(value.item() > 0)
