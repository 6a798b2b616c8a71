"""CLIP baseline: gathered symmetric InfoNCE on one RandomResizedCrop(0.5-1) view per image."""
from __future__ import annotations

import torch.nn.functional as F

from ..config import Config
from ..data.loader import DataSpec
from ..data.text import TextSpec
from ..losses.contrastive import Gathered, top1_accuracy
from .base import Method


class CLIP(Method):
    """The pair loss (``self.contrastive``, softmax or sigmoid) comes from :class:`Method`."""

    @staticmethod
    def data_spec(cfg: Config) -> DataSpec:
        return DataSpec(n_views=1, augment="clip", text=TextSpec(cfg.model.text.context_length))

    def forward(self, batch):
        gather = not self.cfg.method.local_loss
        image = F.normalize(self.clip.encode_image(batch["images"][:, 0]), dim=-1)
        text = F.normalize(self.clip.encode_text(batch["text"]), dim=-1)
        scale = self.contrastive.scale(self.clip)
        img, txt = Gathered(image, gather=gather), Gathered(text, gather=gather)
        loss, logits = self.contrastive(img, txt, scale)
        metrics = {"clip_raw": loss.detach(), "clip_acc": top1_accuracy(logits, img.offset),
                   **self.contrastive.metrics(scale)}
        return {"clip": loss}, metrics
