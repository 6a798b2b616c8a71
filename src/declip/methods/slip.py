"""SLIP: the CLIP loss on a base view plus SimCLR's NT-Xent on two further augmented views.

Views (one batch, [B, 3, C, H, W]; data augment ``slip``): view 1 is CLIP's RandomResizedCrop(0.5-1) only, views
2 and 3 are MoCo v2 views (RRC 0.2-1, colour jitter, grayscale, blur, flip). One image forward serves all three
(3B images) and the projection only the base view: its embedding meets the caption in the pair loss
(``method.contrastive_loss``), the SSL views' pre-projection features go through the SimCLR head (hidden 4096,
out 256) into NT-Xent (tau 0.1), gathered across ranks with gradient.
L = clip_weight * L_clip + simclr_weight * L_simclr (reference 1 / 1).

``method.simclr_weight=0`` builds no head and asks the data for the base view alone: then SLIP is CLIP.
"""
from __future__ import annotations

import torch.nn.functional as F

from ..config import Config
from ..data.loader import DataSpec
from ..data.text import TextSpec
from ..losses.contrastive import Gathered, top1_accuracy
from ..losses.simclr import NTXentLoss
from ..models.heads import SimCLRHead
from ..models.towers import encode_image_with_trunk, trunk_dim
from .base import Method


class SLIP(Method):
    def __init__(self, cfg: Config, clip=None):
        super().__init__(cfg, clip)
        m = cfg.method
        self.w = {"clip": m.clip_weight, "simclr": m.simclr_weight}
        if self.w["simclr"] > 0:
            self.simclr_head = SimCLRHead(trunk_dim(cfg.model), m.simclr_hidden_dim, m.simclr_out_dim)
            self.simclr = NTXentLoss(m.simclr_temperature)

    @staticmethod
    def data_spec(cfg: Config) -> DataSpec:
        ssl = cfg.method.simclr_weight > 0
        return DataSpec(n_views=3 if ssl else 1, augment="slip" if ssl else "clip",
                        text=TextSpec(cfg.model.text.context_length))

    def forward(self, batch):
        w, gather = self.w, not self.cfg.method.local_loss
        images = batch["images"]  # [B, V, C, H, W]: the base view first
        b, v = images.shape[:2]
        flat = images.transpose(0, 1).reshape(v * b, *images.shape[2:])
        losses, metrics = {}, {}
        if w["simclr"] > 0:  # only the base view is embedded: the SSL views' trunk goes to the SimCLR head
            feats, trunk = encode_image_with_trunk(self.clip, flat, embed=b)
        else:
            feats = self.clip.encode_image(flat)
        if w["clip"] > 0:
            image = F.normalize(feats[:b], dim=-1)
            text = F.normalize(self.clip.encode_text(batch["text"]), dim=-1)
            scale = self.contrastive.scale(self.clip)
            img = Gathered(image, gather=gather)
            loss, logits = self.contrastive(img, Gathered(text, gather=gather), scale)
            losses["clip"] = w["clip"] * loss
            metrics.update(clip_raw=loss.detach(), clip_acc=top1_accuracy(logits, img.offset),
                           **self.contrastive.metrics(scale))
        if w["simclr"] > 0:
            # the two SSL views through the head apart: BatchNorm statistics per view, as SLIP's two calls
            z1 = F.normalize(self.simclr_head(trunk[b:2 * b]), dim=-1)
            z2 = F.normalize(self.simclr_head(trunk[2 * b:]), dim=-1)
            loss, acc = self.simclr(Gathered(z1, gather=gather), Gathered(z2, gather=gather))
            losses["simclr"] = w["simclr"] * loss
            metrics.update(simclr_raw=loss.detach(), simclr_acc=acc)
        return losses, metrics
