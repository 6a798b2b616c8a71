"""AdamW with the reference's parameter groups, and linear warm-up followed by cosine decay."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..config import OptimConfig


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights, all biases, the logit scale and embeddings-like 1-d tensors are not decayed."""
    return param.ndim < 2 or name.endswith(".bias") or "logit_scale" in name


def build_optimizer(model: nn.Module, cfg: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    """``fused``: one kernel for the whole update (CUDA); the same math as the default loop."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Linear warm-up from warmup_start_lr to lr, then cosine from lr to min_lr at ``total_steps``."""
    total = cfg.cosine_steps or total_steps
    if step < cfg.warmup_steps:
        return cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * step / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
