"""CLIP baseline: gathered symmetric InfoNCE on one RandomResizedCrop(0.5-1) view per image."""
from __future__ import annotations

import torch.nn.functional as F

from ..config import Config
from ..data.loader import DataSpec
from ..data.text import TextSpec
from ..losses.contrastive import Gathered, SymmetricInfoNCE, top1_accuracy
from ..models.towers import logit_scale_value
from .base import Method


class CLIP(Method):
    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.contrastive = SymmetricInfoNCE()

    @staticmethod
    def data_spec(cfg: Config) -> DataSpec:
        return DataSpec(n_views=1, augment="clip", text=TextSpec(cfg.model.text.context_length))

    def forward(self, batch):
        gather = not self.cfg.method.local_loss
        image = F.normalize(self.clip.encode_image(batch["images"][:, 0]), dim=-1)
        text = F.normalize(self.clip.encode_text(batch["text"]), dim=-1)
        scale = logit_scale_value(self.clip)
        img, txt = Gathered(image, gather=gather), Gathered(text, gather=gather)
        loss, logits = self.contrastive(img, txt, scale)
        metrics = {"clip_raw": loss.detach(), "clip_acc": top1_accuracy(logits, img.offset),
                   "logit_scale": scale.detach()}
        return {"clip": loss}, metrics
