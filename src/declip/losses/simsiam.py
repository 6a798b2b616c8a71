"""SimSiam image self-supervision: symmetric negative cosine with stop-gradient on the target branch."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SimSiamLoss(nn.Module):
    """L = -1/2 [cos(p1, sg(z2)) + cos(p2, sg(z1))], averaged over the batch (range [-1, 1])."""

    def forward(self, p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return -0.5 * (F.cosine_similarity(p1, z2.detach(), dim=-1).mean()
                       + F.cosine_similarity(p2, z1.detach(), dim=-1).mean())
