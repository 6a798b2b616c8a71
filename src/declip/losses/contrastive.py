"""Image-text InfoNCE over the global batch.

Each rank scores its local rows against the columns gathered from every rank (gathered WITH gradient),
labels offset by rank. With gradients summed by the gather's backward and averaged by DDP, this equals the
single-process loss on the concatenated batch. Gather once per feature set, then reuse the columns: DeCLIP
scores 4 image-text pairs and 2 neighbour sets from the same 6 gathers.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import gather_no_grad, gather_with_grad, get_rank


LOGIT_SCALE_CAP = 100.0


def logit_scale_value(clip: nn.Module) -> torch.Tensor:
    """exp(logit_scale) capped at 100 on the VALUE only, as in the reference: the gradient is that of the
    uncapped exp(), so a parameter above log(100) (possible between the clamps, or with the clamp off) still
    gets a gradient and can come back down. A hard ``clamp(max=100)`` would give it a zero gradient."""
    scale = clip.logit_scale.exp()
    return scale - (scale - LOGIT_SCALE_CAP).clamp(min=0).detach()


def local_labels(batch: int, device, offset: int) -> torch.Tensor:
    return torch.arange(batch, device=device) + offset


class Gathered:
    """Local features plus their global columns and this rank's label offset."""

    def __init__(self, local: torch.Tensor, with_grad: bool = True, gather: bool = True):
        self.local = local
        if gather:
            self.all = gather_with_grad(local) if with_grad else gather_no_grad(local)
            self.offset = get_rank() * local.shape[0] if self.all.shape[0] != local.shape[0] else 0
        else:
            self.all, self.offset = local, 0


class SymmetricInfoNCE(nn.Module):
    """(CE(image -> text) + CE(text -> image)) / 2 on L2-normalised features."""

    def forward(self, image: Gathered, text: Gathered, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = local_labels(image.local.shape[0], image.local.device, image.offset)
        logits_i = scale * image.local @ text.all.t()
        logits_t = scale * text.local @ image.all.t()
        loss = (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2
        return loss, logits_i


class ImageToTextInfoNCE(nn.Module):
    """CE(image -> text) only: the nearest-neighbour term, whose text side is a detached queue entry."""

    def forward(self, image: torch.Tensor, text_all: torch.Tensor, offset: int, scale: torch.Tensor):
        labels = local_labels(image.shape[0], image.device, offset)
        return F.cross_entropy(scale * image @ text_all.t(), labels)


@torch.no_grad()
def top1_accuracy(logits: torch.Tensor, offset: int) -> torch.Tensor:
    """A 0-d tensor on the logits' device: read by the trainer at log steps only (no host sync per step)."""
    labels = local_labels(logits.shape[0], logits.device, offset)
    return (logits.detach().argmax(dim=1) == labels).float().mean()


class SoftmaxPairLoss(nn.Module):
    """``method.contrastive_loss=softmax`` (the reference's): symmetric InfoNCE at the towers' clamped logit
    scale, and CE(image -> text) for DeCLIP's nearest-neighbour term. Holds no parameter, so the state dict
    is what it was before the loss became a choice."""

    def __init__(self):
        super().__init__()
        self.symmetric, self.one_way = SymmetricInfoNCE(), ImageToTextInfoNCE()

    def scale(self, clip: nn.Module) -> torch.Tensor:
        return logit_scale_value(clip)

    def forward(self, image: Gathered, text: Gathered, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.symmetric(image, text, scale)

    def image_to_text(self, image: torch.Tensor, text_all: torch.Tensor, offset: int,
                      scale: torch.Tensor) -> torch.Tensor:
        return self.one_way(image, text_all, offset, scale)

    def metrics(self, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logit_scale": scale.detach()}

    def clamp_(self) -> None:
        """Nothing of its own: the towers' scale is clamped by ``Method.after_step``."""
