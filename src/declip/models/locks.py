"""``model.lock_image`` / ``model.lock_text``: freeze a pretrained tower, or all of it but its last groups.

Why: a small-data user fine-tunes a pretrained model, and the first thing that helps with a few thousand pairs
is to keep one tower as it is (LiT locks the image tower) or to let only its top layers move. A frozen
parameter gets no gradient, has no optimizer state (train/optim.py builds groups from trainable parameters
only) and is in no DDP bucket (DDP buckets only parameters that require a gradient), so a locked tower costs
the forward alone. The heads a method adds on top (SimSiam, SimCLR, MLM, FILIP's dense heads) still train.

The groups are open_clip's (``lock_image_tower`` / ``lock_text_tower``), ordered from the input to the output,
and open_clip's own lock does the work where it can:
- ViT: [patch embedding, class and positional embeddings, ln_pre], one group per block but the last, [last
  block, ln_post], [proj]: ``layers + 2`` groups (open_clip's VisionTransformer.lock);
- text: [token and positional embeddings], one per block but the last, [last block, ln_final], [projection]:
  ``layers + 2`` (open_clip's lock_text_tower; its "unlocked_layers" count these groups);
- ResNet (open_clip's ModifiedResNet.lock locks all or nothing): [stem], layer1..layer4, [attention pool]: 6.
The same groups give each tower layer its depth for ``optim.layer_decay`` (train/optim.py).

``model.lock_image_freeze_bn_stats`` (ResNet): the BatchNorm layers of the locked groups stop updating their
running statistics, also across ``model.train()`` calls, so a locked ResNet computes the same function at every
step. open_clip swaps in torchvision's FrozenBatchNorm2d, which drops ``num_batches_tracked`` and turns the
affine weights into buffers (a state dict open_clip's own BatchNorm model no longer loads strictly); here the
module keeps its class's state dict and only its ``train()`` is overridden, so checkpoints and exports load
either way. It runs after SyncBatchNorm's conversion (train/accel.py), which would otherwise undo it.
"""
from __future__ import annotations

import torch.nn as nn

from ..config import ModelConfig


def _params(items) -> list[nn.Parameter]:
    out = []
    for item in items:
        if isinstance(item, nn.Parameter):
            out.append(item)
        elif item is not None:
            out.extend(item.parameters())
    return out


def image_groups(visual: nn.Module) -> list[list[nn.Parameter]]:
    """The image tower's parameters in open_clip's lock groups, input first (see the module docstring)."""
    if hasattr(visual, "attnpool"):  # ModifiedResNet
        stem = [visual.conv1, visual.bn1, visual.conv2, visual.bn2, visual.conv3, visual.bn3]
        return [_params(stem), *[_params([getattr(visual, f"layer{i}")]) for i in range(1, 5)],
                _params([visual.attnpool])]
    blocks = list(visual.transformer.resblocks)
    first = [visual.conv1, visual.class_embedding, visual.positional_embedding, visual.ln_pre]
    return [_params(first), *[_params([b]) for b in blocks[:-1]], _params([blocks[-1], visual.ln_post]),
            _params([visual.proj])]


def text_groups(text: nn.Module) -> list[list[nn.Parameter]]:
    """The text tower's parameters in open_clip's lock groups, input first (see the module docstring)."""
    blocks = list(text.transformer.resblocks)
    first = [text.token_embedding, text.positional_embedding, getattr(text, "cls_emb", None)]
    return [_params(first), *[_params([b]) for b in blocks[:-1]], _params([blocks[-1], text.ln_final]),
            _params([text.text_projection])]


class StatsFrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that stays in eval mode (running statistics used, never updated) whatever ``train()`` says."""

    def train(self, mode: bool = True):
        return super().train(False)


class StatsFrozenSyncBatchNorm(nn.SyncBatchNorm):
    """The same for a SyncBatchNorm (train.sync_bn): in eval mode it needs no communication either."""

    def train(self, mode: bool = True):
        return super().train(False)


def freeze_bn_stats(module: nn.Module) -> int:
    """Freeze the running statistics of every BatchNorm under ``module`` whose parameters are all frozen (the
    locked groups); returns how many. The module keeps its parameters, buffers and state-dict keys."""
    n = 0
    for bn in module.modules():
        if isinstance(bn, (StatsFrozenBatchNorm2d, StatsFrozenSyncBatchNorm)):
            continue
        if isinstance(bn, (nn.BatchNorm2d, nn.SyncBatchNorm)) and not any(p.requires_grad for p in bn.parameters()):
            bn.__class__ = StatsFrozenSyncBatchNorm if isinstance(bn, nn.SyncBatchNorm) else StatsFrozenBatchNorm2d
            bn.eval()
            n += 1
    return n


def lock_towers(clip: nn.Module, cfg: ModelConfig) -> list[str]:
    """Apply ``model.lock_*`` to an open_clip CustomTextCLIP in place; returns the lines to log."""
    lines = []
    if cfg.lock_image:
        n = cfg.lock_image_unlocked_groups
        if hasattr(clip.visual, "attnpool"):  # open_clip locks a ModifiedResNet all or nothing
            clip.lock_image_tower(unlocked_groups=0, freeze_bn_stats=False)
            for group in image_groups(clip.visual)[::-1][:n]:
                for p in group:
                    p.requires_grad_(True)
        else:
            clip.lock_image_tower(unlocked_groups=n, freeze_bn_stats=False)
            if cfg.vision.freeze_conv1:  # DeCLIP's frozen patch embedding stays frozen if group 0 is unlocked
                clip.visual.conv1.requires_grad_(False)
        frozen_bn = freeze_bn_stats(clip.visual) if cfg.lock_image_freeze_bn_stats else 0
        lines.append(f"model.lock_image: the image tower is frozen but its last {n} of "
                     f"{len(image_groups(clip.visual))} groups" + (f"; {frozen_bn} BatchNorm layers keep their "
                                                                   "running statistics" if frozen_bn else ""))
    if cfg.lock_text:
        clip.lock_text_tower(unlocked_layers=cfg.lock_text_unlocked_layers, freeze_layer_norm=True)
        lines.append(f"model.lock_text: the text tower is frozen but its last {cfg.lock_text_unlocked_layers} of "
                     f"{len(text_groups(clip.text))} groups")
    return lines


PARTS = ("image", "text", "heads", "scale")


def part_of(name: str) -> str:
    """Which part of a method a parameter belongs to, by its name under the method: the image tower, the text
    tower, the heads the method adds (projectors, predictors, SimCLR, MLM and dense heads), or the logit scale
    (and the sigmoid loss's scale and bias), which trains at the base lr."""
    if name.startswith("clip.visual."):
        return "image"
    if name.startswith("clip.text."):
        return "text"
    if name.startswith(("clip.", "contrastive.")):
        return "scale"
    return "heads"


def describe_parts(method: nn.Module) -> str:
    """One line: trainable / total parameters of each part (what a lock froze shows here)."""
    counts: dict[str, list[int]] = {}
    for name, p in method.named_parameters():
        c = counts.setdefault(part_of(name), [0, 0])
        c[0] += p.numel() if p.requires_grad else 0
        c[1] += p.numel()
    return "parameters trainable / total: " + ", ".join(
        f"{part} {c[0] / 1e6:.3g}M / {c[1] / 1e6:.3g}M" + (" (frozen)" if c[0] == 0 else "")
        for part, c in sorted(counts.items(), key=lambda kv: PARTS.index(kv[0])))
