"""FIFO queue of text features for nearest-neighbour supervision (from NNCLR, as DeCLIP uses it).

The bank lives in registered buffers so it stays on the training device and travels in state_dict()
(the reference kept it on the CPU, unsaved: a resumed run started from noise). Like the reference it starts
as random unit vectors; ``method.nn_warmup_steps`` can hold the loss back while it fills with real features.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class NearestNeighborQueue(nn.Module):
    def __init__(self, size: int, dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("bank", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))  # total features ever enqueued

    @torch.no_grad()
    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Top-1 bank entry by cosine for each row of the (normalised) ``x``; re-normalised."""
        idx = (x.detach().to(self.bank.dtype) @ self.bank.t()).argmax(dim=1)
        return F.normalize(self.bank[idx], dim=1).to(x.dtype)

    @torch.no_grad()
    def enqueue(self, x: torch.Tensor) -> None:
        x = x.detach().to(self.bank.dtype)
        x = F.normalize(x[torch.isfinite(x).all(dim=1)], dim=1)  # a NaN step must not poison the bank
        n, size = x.shape[0], self.bank.shape[0]
        if n == 0:
            return
        if n >= size:
            x, n = x[-size:], size
        start = int(self.ptr)
        end = start + n
        if end <= size:
            self.bank[start:end] = x
        else:  # wrap around
            first = size - start
            self.bank[start:] = x[:first]
            self.bank[: n - first] = x[first:]
        self.ptr.fill_(end % size)
        self.seen.add_(n)
