"""Seed mixing, defined once: every per-item random stream (generated builtin pairs, per-sample views and
text) derives from (run seed, ...) through these, so a sample's randomness never depends on which worker or
rank draws it, and a resumed run redraws exactly what the uninterrupted run would have."""
from __future__ import annotations


def item_seed(seed: int, index: int) -> int:
    """One integer per (seed, index): distinct for every index below ~1e6 per seed step."""
    return seed * 1_000_003 + index


def epoch_seed(seed: int, epoch: int) -> int:
    """The sampler's per-epoch permutation seed."""
    return seed * 7919 + epoch
