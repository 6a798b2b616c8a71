"""Heads that exist only for training: SimSiam's projector/predictor, the MLM vocabulary head and FILIP's dense
heads (which token-wise evaluation reads too)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class SimSiamProjector(nn.Module):
    """feature_dim -> d -> d -> d; Linear+BN+ReLU, Linear+BN+ReLU, Linear+BN (reference: d = 1024)."""

    def __init__(self, in_dim: int, dim: int = 1024):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim),
        )

    def forward(self, x):
        return self.net(x)


class SimSiamPredictor(nn.Module):
    """d -> h -> d bottleneck; BN+ReLU on the hidden layer only (reference: 1024 -> 512 -> 1024)."""

    def __init__(self, dim: int = 1024, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, dim),
        )

    def forward(self, x):
        return self.net(x)


class MLMHead(nn.Linear):
    """Linear(width, vocab) over ln_final token features; applied only at masked positions."""


class SimCLRHead(nn.Module):
    """SLIP's image MLP on the pre-projection image feature: in -> hidden -> hidden -> out, Linear+BN+ReLU twice,
    then a plain Linear (no BN on the output). SLIP: hidden 4096, out 256."""

    def __init__(self, in_dim: int, hidden: int = 4096, out: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, out),
        )

    def forward(self, x):
        return self.net(x)
class DenseHeads(nn.Module):
    """FILIP's dense heads: image tokens and text tokens each mapped by a Linear (with bias) to ``dim`` (reference:
    256), and a dense logit scale of its own, init ln(1/0.07). Like the reference's FILIP and DeFILIP solvers, the
    method clamps it into [model.logit_scale_min, 6] after every step exactly as it clamps the global one
    (``Method.softmax_scales``); its exp() is not capped at 100 as the global one's is. The optimizer's no-decay
    rule matches it by name."""

    def __init__(self, image_width: int, text_width: int, dim: int = 256):
        super().__init__()
        self.image = nn.Linear(image_width, dim)
        self.text = nn.Linear(text_width, dim)
        self.logit_scale_dense = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
