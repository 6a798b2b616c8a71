"""One place that turns ``train.device`` into a torch device and a process-group backend.

``auto`` takes the accelerator torch reports (CUDA, XPU, MPS, or an NPU once ``torch_npu`` is imported),
else the CPU. Any other value names a device type (one of ``config_parse.ACCELERATOR_TYPES``, checked
with the config); ``npu`` imports ``torch_npu`` lazily (untested here: no Ascend machine). Each local rank
gets its own device: more local ranks than devices is refused, because ranks stacked on one device either fail
in the collective library or silently share it.

``TYPE:N`` (``cuda:1``) picks one device for a single-process run. Under torchrun with several processes on a
node it is a config error: one index cannot serve every local rank, and choosing the GPUs is
CUDA_VISIBLE_DEVICES's job (the local rank then indexes the visible ones).
"""
from __future__ import annotations

import importlib

import torch

from .config_parse import split_device
from .errors import ConfigError, DeviceError


def _accelerator_module(device_type: str):
    if device_type == "npu":
        try:
            importlib.import_module("torch_npu")  # registers torch.npu
        except ImportError:
            raise DeviceError("train.device=npu needs the torch_npu package (Ascend); it is not installed") from None
    return getattr(torch, device_type, None)


def device_count(device_type: str) -> int:
    if device_type == "cpu":
        return 1
    module = _accelerator_module(device_type)
    try:
        return int(module.device_count()) if module is not None and module.is_available() else 0
    except (AttributeError, RuntimeError):
        return 0


def resolve_device_type(want: str, spec: str | None = None) -> str:
    """``auto`` -> the available accelerator's type or ``cpu``; otherwise ``want`` once checked. ``spec``: the
    ``train.device`` value as written (``cuda:1``), for the message."""
    if want == "auto":
        acc = torch.accelerator.current_accelerator(check_available=True) if hasattr(torch, "accelerator") \
            else (torch.device("cuda") if torch.cuda.is_available() else None)
        return acc.type if acc is not None else "cpu"
    if want != "cpu" and device_count(want) == 0:
        raise DeviceError(f"train.device={spec or want} but no {want.upper()} device is available here "
                          "(use train.device=cpu or auto)")
    return want


def resolve_device(want: str, local_rank: int = 0, local_world_size: int = 1) -> torch.device:
    """The device of this process. With one visible device per task (SLURM --gpus-per-task=1, or
    CUDA_VISIBLE_DEVICES set per process) it is device 0 whatever the local rank."""
    parsed = split_device(want)
    if parsed is None:
        raise ConfigError(f"train.device={want}: auto, cpu, or a device type with an optional index (cuda:1)")
    device_type, index = parsed[0], parsed[1]
    device_type = resolve_device_type(device_type, want)
    if device_type == "cpu":
        return torch.device("cpu")
    n = device_count(device_type)
    if index is not None:
        if local_world_size > 1:
            raise ConfigError(f"train.device={want} names one device but {local_world_size} processes run on this "
                              f"node: use train.device={device_type} (each local rank takes its own) and choose "
                              "the GPUs with CUDA_VISIBLE_DEVICES")
        if index >= n:
            raise DeviceError(f"train.device={want} but only {n} {device_type} device(s) are visible (indices 0-"
                              f"{n - 1}); CUDA_VISIBLE_DEVICES renumbers them from 0")
        return torch.device(device_type, index)
    if local_world_size > n:
        raise DeviceError(f"{local_world_size} processes on this node but only {n} {device_type} device(s) "
                          f"visible: launch at most {n} per node (torchrun --nproc_per_node {n}) or set "
                          "train.device=cpu")
    return torch.device(device_type, local_rank % n)


def backend_for(device: torch.device) -> str:
    """The process-group backend torch pairs with this device type (gloo, nccl, xccl, hccl, ...)."""
    backends = torch.distributed.Backend.default_device_backend_map
    return backends.get(device.type, "gloo")
