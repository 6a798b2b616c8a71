"""SigLIP's sigmoid image-text loss (Zhai et al. 2023, as open_clip's SigLipLoss), a drop-in for the softmax pair.

Every (image, caption) pair of the global batch is an independent binary problem: label +1 for the matching
pair, -1 for every other; logit = s * x.y + b with a learnable temperature s = exp(logit_scale) (init log 10) and
bias b (init -10, so the ~B^2 negatives start at ~0 loss). Per rank:

    L_r = -1/B_local * sum_{i local, j global} log sigmoid(label_ij * (s * x_i . y_j + b))

Distributed: open_clip passes the text features round the ring (neighbour exchange, or its 'gather' option);
we all-gather them WITH gradient (the same ``Gathered`` columns the softmax loss uses, its ``gather`` option).
Rank r scores its local images against every caption, so the ranks together score each global pair exactly
once; the gather's backward sums each caption's gradient over the ranks and DDP averages over W ranks, so the
gradients are those of one process on the concatenated batch (loss / W * B, the same normalisation).

The scale and bias live HERE, not in the open_clip towers: they are trained (registered parameters),
checkpointed with the method's state dict, and kept out of weight decay by train/optim.py's rule (the name holds
``logit_scale``; the bias is 0-d). They are not clamped to the reference's [3, 6] (``model.logit_scale_min``
is for the softmax scale: SigLIP starts at log 10 = 2.3): :meth:`clamp_` keeps open_clip's [0, log 100].
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .contrastive import Gathered

SIGLIP_SCALE_INIT = math.log(10.0)
SIGLIP_BIAS_INIT = -10.0
SIGLIP_SCALE_MAX = math.log(100.0)  # open_clip's clamp of every logit scale, SigLIP's included


def sigmoid_pair_loss(image: torch.Tensor, text_all: torch.Tensor, offset: int, scale: torch.Tensor,
                      bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits) of local ``image`` rows [B, D] against every column of ``text_all`` [N, D]; the positive of
    row i is column ``offset + i``."""
    logits = scale * image @ text_all.t() + bias
    labels = -torch.ones_like(logits)
    rows = torch.arange(image.shape[0], device=image.device)
    labels[rows, rows + offset] = 1.0
    return -F.logsigmoid(labels * logits).sum() / image.shape[0], logits


class SigmoidPairLoss(nn.Module):
    """``method.contrastive_loss=sigmoid``: the pair loss with its own temperature and bias (see module doc)."""

    def __init__(self):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(SIGLIP_SCALE_INIT))
        self.logit_bias = nn.Parameter(torch.tensor(SIGLIP_BIAS_INIT))

    def scale(self, clip: nn.Module) -> torch.Tensor:  # the towers' own logit scale is not used
        return self.logit_scale.exp()

    def forward(self, image: Gathered, text: Gathered, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The sigmoid loss is one sum over all pairs: image -> text covers both directions."""
        return sigmoid_pair_loss(image.local, text.all, text.offset, scale, self.logit_bias)

    def image_to_text(self, image: torch.Tensor, text_all: torch.Tensor, offset: int,
                      scale: torch.Tensor) -> torch.Tensor:
        """DeCLIP's nearest-neighbour term: local images vs the gathered (detached) neighbours, one direction."""
        return sigmoid_pair_loss(image, text_all, offset, scale, self.logit_bias)[0]

    def metrics(self, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logit_scale": scale.detach(), "logit_bias": self.logit_bias.detach()}

    @torch.no_grad()
    def clamp_(self) -> None:
        self.logit_scale.clamp_(0.0, SIGLIP_SCALE_MAX)
