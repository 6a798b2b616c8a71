"""SimCLR's NT-Xent between two augmented views, gathered across ranks (as SLIP's SIMCLRLoss).

For the local rows a of view 1 and b of view 2 (L2-normalised), against the gathered columns A, B of both views:
row i's positive is its other view (column offset + i of the other view); its negatives are every other column
of both views, its own column of its own view excluded (masked to -inf):

    L = 1/2 [CE([a B^T, a A^T] / tau) + CE([b A^T, b B^T] / tau)],  tau = 0.1

Per rank a mean over the local rows; with the columns gathered WITH gradient, the ranks' mean is the
single-process loss on the concatenated batch, and so are the gradients (see losses/contrastive.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .contrastive import Gathered, local_labels


class NTXentLoss(nn.Module):
    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(self, a: Gathered, b: Gathered) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, accuracy of view 1 -> view 2 over both views' columns) for ``Gathered`` normalised views."""
        n_local, n_all = a.local.shape[0], a.all.shape[0]
        labels = local_labels(n_local, a.local.device, a.offset)
        self_mask = F.one_hot(labels, n_all).bool()

        def logits(x: torch.Tensor, other: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
            own = (x @ same.t()).masked_fill(self_mask, float("-inf"))
            return torch.cat([x @ other.t(), own], dim=1) / self.temperature

        logits_a = logits(a.local, b.all, a.all)
        loss = (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits(b.local, a.all, b.all), labels)) / 2
        acc = (logits_a.detach().argmax(dim=1) == labels).float().mean()
        return loss, acc
