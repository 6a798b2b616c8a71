"""Loss terms, one small module each. :func:`build_pair_loss` is the one place a method gets its image-text
loss from, so every method's image-text terms follow ``method.contrastive_loss``."""
from __future__ import annotations

import torch.nn as nn


def build_pair_loss(kind: str) -> nn.Module:
    """``softmax`` (symmetric InfoNCE, the reference's) or ``sigmoid`` (SigLIP). Both take
    ``(image: Gathered, text: Gathered, scale) -> (loss, logits)`` and ``image_to_text(image, text_all, offset,
    scale) -> loss``, and give ``scale(clip)``, ``metrics(scale)`` and ``clamp_()``."""
    if kind == "softmax":
        from .contrastive import SoftmaxPairLoss

        return SoftmaxPairLoss()
    if kind == "sigmoid":
        from .sigmoid import SigmoidPairLoss

        return SigmoidPairLoss()
    raise ValueError(f"unknown contrastive loss {kind!r} (softmax | sigmoid)")
