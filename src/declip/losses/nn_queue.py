"""FIFO queue of text features for nearest-neighbour supervision (from NNCLR, as DeCLIP uses it).

The bank lives in registered buffers so it stays on the training device and travels in state_dict()
(the reference kept it on the CPU, unsaved: a resumed run started from noise). Like the reference it starts
as random unit vectors; ``method.nn_warmup_steps`` can hold the loss back while it fills with real features.

``track_ids`` (``method.nn_exclude_self``) also stores each entry's sample index, so that a caption's nearest
neighbour is never a copy of that same caption. The reference never needed it: its 65,536 entries are the last
16 steps of a 15M-pair epoch. On a small data set the queue holds every caption several times over (1,000
pairs, 4,096 entries), and the "nearest neighbour" would be the caption itself, an older feature of the
positive that the contrastive term already uses.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class NearestNeighborQueue(nn.Module):
    def __init__(self, size: int, dim: int, seed: int = 0, track_ids: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("bank", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))  # total features ever enqueued
        if track_ids:  # only then: the reference's state_dict keys stay as they were
            self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))

    @torch.no_grad()
    def nearest(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Top-1 bank entry by cosine for each row of the (normalised) ``x``, re-normalised; with ``ids`` (the
        rows' sample indices, ``track_ids`` queues) never an entry of the same sample."""
        sims = x.detach().to(self.bank.dtype) @ self.bank.t()
        if ids is not None:
            sims = sims.masked_fill(ids.reshape(-1, 1) == self.ids.reshape(1, -1), float("-inf"))
        idx = sims.argmax(dim=1)
        return F.normalize(self.bank[idx], dim=1).to(x.dtype)

    @torch.no_grad()
    def enqueue(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Write ``x`` at the pointer, wrapping around. A batch holding any NaN/inf row is dropped whole (a
        non-finite step must not poison the bank): decided on the device, with fixed shapes, so the step never
        waits for the device to say where to write or how much."""
        x = x.detach().to(self.bank.dtype)
        size = self.bank.shape[0]
        if x.shape[0] >= size:
            x, ids = x[-size:], (None if ids is None else ids[-size:])
        n = x.shape[0]
        if n == 0:
            return
        keep = torch.isfinite(x).all()
        rows = (self.ptr + torch.arange(n, device=x.device)) % size
        fresh = F.normalize(torch.nan_to_num(x), dim=1)
        self.bank.index_copy_(0, rows, torch.where(keep, fresh, self.bank.index_select(0, rows)))
        if ids is not None:
            self.ids.index_copy_(0, rows, torch.where(keep, ids.to(self.ids), self.ids.index_select(0, rows)))
        added = keep.long() * n
        self.ptr.copy_((self.ptr + added) % size)
        self.seen.add_(added)
