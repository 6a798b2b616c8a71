"""Speed and memory options, applied to a method between building it and training it.

They live here, not in the trainer, so each can be tested on its own (tests/test_precision.py) and the
distributed equality test (tests/test_distributed.py) wraps the method exactly as training does.

Order matters and is fixed by :func:`prepare_method`, called before the optimizer is built and before DDP:
- activation checkpointing (open_clip's ``set_grad_checkpointing``): recomputes each transformer block in the
  backward instead of storing its activations; the same gradients for less memory. open_clip's ModifiedResNet
  has no checkpointing (its method is a no-op), so for ResNet towers only the text tower is checkpointed.
- SyncBatchNorm: converts the image tower's BatchNorm (the ResNet's) so its batch statistics cover the global
  batch; the SimSiam heads' BatchNorm stays per rank, as in the reference. The converted modules reuse the same
  Parameter objects and state_dict keys, so checkpoints load either way. torch's SyncBatchNorm refuses CPU
  tensors in a process group, so on gloo it is refused up front with a clear error rather than mid-step.
- tower locks (``model.lock_*``, models/locks.py): after SyncBatchNorm, whose conversion would undo frozen
  BatchNorm statistics; before the optimizer (no state for a frozen parameter) and DDP (no bucket for one).
- channels_last (ResNet towers): weights converted once; a forward pre-hook on the image tower converts its
  input, because methods build the 4-D image batch themselves (DeCLIP stacks its two views).
- torch.compile (``train.compile=auto``: on CUDA, where it paid 34% on the ViT-B/32 DeCLIP step; off on the
  CPU, where compiling costs more than a short run gains): ``nn.Module.compile()`` on each tower, in place,
  so parameter names (and checkpoints) do not gain an ``_orig_mod.`` prefix. Towers, not the method: methods
  call ``.item()`` and update the NN queue in their forward, which would break the graph at every step.
"""
from __future__ import annotations

from contextlib import nullcontext
import inspect
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Config
from ..models.locks import describe_parts, lock_towers
from .metrics import log


class SyncBNUnsupported(RuntimeError):
    """train.sync_bn with several CPU processes: torch's SyncBatchNorm runs on accelerators only."""


def effective_precision(precision: str, device_type: str) -> str:
    """The precision a run really uses. bf16/fp16 autocast is a CUDA feature here: on the CPU bf16 matmuls
    were ~100x slower than fp32 on the development machine, so a CPU run warns and trains in fp32."""
    if precision != "fp32" and device_type != "cuda":
        log.warning("train.precision=%s is for CUDA devices; this run is on the %s and trains in fp32",
                    precision, device_type)
        return "fp32"
    return precision


def autocast(precision: str, device_type: str):
    """Autocast context for the forward: bf16 or fp16 on CUDA, nothing otherwise."""
    if precision == "fp32" or device_type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _to_channels_last(_module: nn.Module, args: tuple):
    x = args[0]
    if torch.is_tensor(x) and x.dim() == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def prepare_method(method: nn.Module, cfg: Config, device_type: str, world_size: int) -> nn.Module:
    """Apply the ``train.*`` speed/memory options to ``method`` in place (and return it)."""
    tr, clip = cfg.train, method.clip
    resnet = cfg.model.vision.kind == "resnet"
    if tr.grad_checkpointing:
        clip.set_grad_checkpointing(True)
        if resnet:
            log.warning("train.grad_checkpointing: open_clip cannot checkpoint a ResNet image tower; only the "
                        "text tower is checkpointed")
    if tr.sync_bn:
        if world_size > 1 and device_type != "cuda":
            raise SyncBNUnsupported(
                "train.sync_bn=true needs CUDA devices: torch's SyncBatchNorm rejects CPU tensors in a process "
                "group (gloo). Set train.sync_bn=false for CPU runs (BatchNorm statistics stay per rank).")
        # The image tower only, as the reference: its BatchNorm sees the global batch, while the SimSiam heads'
        # BatchNorm stays per rank (part of SimSiam's recipe: per-GPU statistics).
        n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in clip.visual.modules())
        clip.visual = nn.SyncBatchNorm.convert_sync_batchnorm(clip.visual)  # children replaced in place
        log.info("train.sync_bn: %d BatchNorm layers of the image tower synchronised across ranks (the heads' "
                 "BatchNorm stays per rank)", n_bn)
    for line in lock_towers(clip, cfg.model):
        log.info("%s", line)
    log.info("%s", describe_parts(method))
    if tr.channels_last:
        if resnet:
            clip.visual.to(memory_format=torch.channels_last)
            clip.visual.register_forward_pre_hook(_to_channels_last)
        else:
            log.warning("train.channels_last only helps convolutional (ResNet) image towers; ignored for a ViT")
    if tr.compile is True or (tr.compile == "auto" and device_type == "cuda"):
        clip.visual.compile()
        clip.text.compile()
    return method


def wrap_ddp(method: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """DDP for several processes, the method itself for one.

    Buffers are synchronised once, when DDP starts (every rank begins from rank 0's NN queue and BN
    statistics), and never again: DeCLIP's queue and the BatchNorm statistics are per rank by design, and
    rank 0's must not overwrite the others' at every forward (``forward_sync_buffers=False``, torch 2.13's
    replacement for ``broadcast_buffers=False``)."""
    if world_size <= 1:
        return method
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
               else {"broadcast_buffers": False})  # torch < 2.13
    return DDP(method, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


def scaled_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter],
                grad_clip: float) -> bool:
    """Clip (on unscaled gradients) and step through the gradient scaler; False when fp16 overflowed.

    With fp16 the scaler must unscale the gradients before clipping, or the threshold would apply to
    gradients multiplied by the loss scale. An overflow (inf/NaN gradient) makes ``scaler.step`` skip the
    optimizer step and ``update`` halve the scale: that is the scaler working as intended (a few such steps
    are normal at the start of fp16 training), detected here by the scale going down. With the scaler
    disabled (fp32, bf16) every call steps.
    """
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if not scaler.is_enabled():
        optimizer.step()
        return True
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= before
