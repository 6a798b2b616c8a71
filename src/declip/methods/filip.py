"""FILIP: the global image-text InfoNCE plus FILIP's token-wise late-interaction loss (losses/filip.py).

As in the reference (Sense-GVT/DeCLIP prototype/model/filip.py, experiments/filip_experiments/yfcc15m/): one
image view from the MoCo v2 pipeline (the reference's loader draws two, FILIP reads the first), and the caption
MLM-masked (its config sets text_mask_type: MLM with a 0 MLM weight, so both the global and the dense term see
the masked caption); ``method.contrast_text=plain`` feeds the unmasked caption instead. ``DenseTerm`` is shared
with DeFILIP. A term whose weight is 0 is not computed, and the dense heads are not built then.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..data.loader import DataSpec
from ..data.text import TextSpec
from ..losses.contrastive import Gathered, top1_accuracy
from ..losses.filip import TokenwiseInfoNCE
from ..models.heads import DenseHeads
from ..models.towers import encode_image_with_tokens, encode_text_with_tokens, text_token_mask, trunk_dim
from .base import Method


class DenseTerm(nn.Module):
    """FILIP's dense heads and loss: image tokens, text token features (ln_final) and the caption's ids ->
    (loss, image -> text dense logits, label offset)."""

    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.method
        self.heads = DenseHeads(trunk_dim(cfg.model), cfg.model.text.width, m.filip_dim)
        self.loss = TokenwiseInfoNCE(m.filip_topk, m.filip_chunk)

    def forward(self, image_tokens, text_tokens, text_ids, gather: bool = True):
        scale = self.heads.logit_scale_dense.exp()
        return self.loss(self.heads.image(image_tokens), self.heads.text(text_tokens), text_token_mask(text_ids),
                         scale, gather)


class FILIP(Method):
    def __init__(self, cfg: Config, clip=None):
        super().__init__(cfg, clip)
        m = cfg.method
        self.w = {"clip": m.clip_weight, "filip": m.filip_weight}
        if self.w["filip"] > 0:
            self.dense = DenseTerm(cfg)

    @staticmethod
    def data_spec(cfg: Config) -> DataSpec:
        m = cfg.method
        return DataSpec(n_views=1, augment=m.augment, text=TextSpec(
            cfg.model.text.context_length, mlm=m.contrast_text == "masked", mask_prob=m.mask_prob))

    def forward(self, batch):
        w, gather = self.w, not self.cfg.method.local_loss
        images, ids = batch["images"][:, 0], batch["text"]
        losses, metrics = {}, {}
        if w["filip"] > 0:
            image, image_tokens = encode_image_with_tokens(self.clip, images)
            text, text_tokens = encode_text_with_tokens(self.clip, ids)
            loss, logits, offset = self.dense(image_tokens, text_tokens, ids, gather)
            losses["filip"] = w["filip"] * loss
            metrics["filip_raw"], metrics["filip_acc"] = loss.detach(), top1_accuracy(logits, offset)
            metrics["logit_scale_dense"] = self.dense.heads.logit_scale_dense.exp().detach()
        else:
            image, text = self.clip.encode_image(images), self.clip.encode_text(ids)
        if w["clip"] > 0:
            scale = self.contrastive.scale(self.clip)  # method.contrastive_loss: softmax or sigmoid (Method)
            img = Gathered(F.normalize(image, dim=-1), gather=gather)
            loss, logits = self.contrastive(img, Gathered(F.normalize(text, dim=-1), gather=gather), scale)
            losses["clip"] = w["clip"] * loss
            metrics.update(clip_raw=loss.detach(), clip_acc=top1_accuracy(logits, img.offset),
                           **self.contrastive.metrics(scale))
        return losses, metrics

