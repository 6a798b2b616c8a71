"""AdamW with the reference's parameter groups, and linear warm-up followed by cosine decay.

Fine-tuning (issue 40) adds learning rates per part: ``optim.image_lr_mult``, ``optim.text_lr_mult`` and
``optim.heads_lr_mult`` scale the lr of the image tower, the text tower and the heads a method adds (projectors,
predictors, SimCLR, MLM and dense heads); ``optim.layer_decay`` d < 1 scales a tower's lock group i of n (input
first, models/locks.py: the embeddings first, the projection last) by d ** (n - 1 - i) on top, so the layers
nearest the input move least. The logit scale (and the sigmoid loss's scale and bias) keeps the base lr. Each
param group carries its ``lr_mult`` and ``part``; the schedule (``set_lr``) scales every group by its
multiplier, and a checkpoint's groups carry them, so an exact resume keeps them. With every multiplier 1 and
no decay the groups are the reference's two (decay / no decay), as before, so older checkpoints resume.
Frozen parameters (``model.lock_*``) are in no group: no optimizer state.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..config import OptimConfig
from ..errors import CheckpointError
from ..models.locks import PARTS, image_groups, part_of, text_groups
from .metrics import log


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights, all biases, the logit scale and embeddings-like 1-d tensors are not decayed."""
    return param.ndim < 2 or name.endswith(".bias") or "logit_scale" in name


def per_part(cfg: OptimConfig) -> bool:
    """Whether this run sets any per-part lr (otherwise the two reference groups)."""
    return (cfg.image_lr_mult, cfg.text_lr_mult, cfg.heads_lr_mult, cfg.layer_decay) != (1.0, 1.0, 1.0, 1.0)


def _depths(model: nn.Module) -> dict[int, tuple[int, int]]:
    """id(parameter) -> (its tower lock group, the tower's group count), for a method's towers."""
    clip = getattr(model, "clip", None)
    if clip is None:
        return {}
    out = {}
    for groups in (image_groups(clip.visual), text_groups(clip.text)):
        for i, group in enumerate(groups):
            out.update({id(p): (i, len(groups)) for p in group})
    return out


def lr_multiplier(cfg: OptimConfig, part: str, depth: tuple[int, int] | None) -> float:
    mult = {"image": cfg.image_lr_mult, "text": cfg.text_lr_mult, "heads": cfg.heads_lr_mult}.get(part, 1.0)
    if depth is not None and part in ("image", "text"):
        mult *= cfg.layer_decay ** (depth[1] - 1 - depth[0])
    return mult


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """The trainable parameters in groups: (part, multiplier, decay or not) when ``per_part``, else decay / not."""
    split, depths = per_part(cfg), _depths(model)
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if no_decay(name, p) else cfg.weight_decay
        part = part_of(name) if split else "all"
        mult = lr_multiplier(cfg, part, depths.get(id(p))) if split else 1.0
        key = (PARTS.index(part) if split else 0, -mult, wd == 0.0)
        groups.setdefault(key, {"params": [], "weight_decay": wd, "lr_mult": mult, "part": part})["params"].append(p)
    if not split:  # the reference's order: decayed first (what checkpoints before per-part lrs hold)
        return [groups[k] for k in sorted(groups, key=lambda k: k[2])]
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    """``fused``: one kernel for the whole update (CUDA); the same math as the default loop."""
    groups = param_groups(model, cfg)
    if per_part(cfg):
        log.info("lr per part: %s", describe_lrs(groups, cfg))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)


def describe_lrs(groups: list[dict], cfg: OptimConfig) -> str:
    """``image x0.1 (layer decay 0.75: x0.0075-x0.1), text x1, heads x10, scale x1`` for the start of the log."""
    parts: dict[str, list[float]] = {}
    for g in groups:
        parts.setdefault(g["part"], []).append(g["lr_mult"])
    shown = []
    for part, mults in parts.items():
        low, high = min(mults), max(mults)
        decay = f" (optim.layer_decay {cfg.layer_decay:g}: x{low:.3g}-x{high:.3g})" if low != high else ""
        shown.append(f"{part} x{high:.3g}{decay}")
    return ", ".join(shown) + " of the scheduled lr"


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Linear warm-up from warmup_start_lr to lr, then cosine from lr to min_lr at ``total_steps``."""
    total = cfg.cosine_steps or total_steps
    if step < cfg.warmup_steps:
        return cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * step / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The scheduled lr, times each group's multiplier (1 for the reference's groups)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def part_lrs(optimizer: torch.optim.Optimizer, lr: float) -> dict[str, float]:
    """The metrics record's lrs: ``lr`` (the schedule's) and, with per-part lrs, ``lr/PART`` (the part's highest:
    its top layer's under layer decay)."""
    out = {"lr": lr}
    for group in optimizer.param_groups:
        part = group.get("part", "all")
        if part not in ("all", "scale"):
            out[f"lr/{part}"] = max(out.get(f"lr/{part}", 0.0), lr * group["lr_mult"])
    return out


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict, path) -> None:
    """Restore a checkpoint's optimizer; the groups must be the same (locks and per-part lrs as saved). Each group
    keeps the multiplier this config gives it: the checkpoint's are the same unless the run resumes with
    --allow-config-change on purpose."""
    mine = [(g.get("part"), g.get("lr_mult", 1.0)) for g in optimizer.param_groups]
    sizes = [len(g["params"]) for g in saved.get("param_groups", [])]
    if sizes != [len(g["params"]) for g in optimizer.param_groups]:
        raise CheckpointError(f"{path}: its optimizer has parameter groups of {sizes} parameters, this config "
                              f"{[len(g['params']) for g in optimizer.param_groups]}: optim.*_lr_mult / "
                              "optim.layer_decay were changed to or from their defaults; resume with the "
                              "checkpoint's settings, or start a new run from its export (model.init_from)")
    optimizer.load_state_dict(saved)
    for group, (part, mult) in zip(optimizer.param_groups, mine):
        group["lr_mult"] = mult
        if part is not None:
            group["part"] = part
