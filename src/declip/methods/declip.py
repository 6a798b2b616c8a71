"""DeCLIP: CLIP + image self-supervision (SimSiam) + text self-supervision (MLM) + multi-view and
nearest-neighbour supervision.

One image forward serves both views (2B images in one batch) and one text forward serves the masked caption
and its EDA view (2B captions): the masked caption's EOT feature is the contrastive text feature (as in the
reference) and its token features feed the MLM head at the masked positions only. With
``method.contrast_text=plain`` the contrastive terms see the unmasked caption instead, and the masked one is
appended to the same forward (3B captions) for the MLM head alone. A branch whose weight is
0 is not computed at all (and its head is not built, so nothing can receive a gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import Config
from ..data.loader import DataSpec
from ..data.text import TextSpec
from ..vocab import VOCAB_SIZE
from ..losses.contrastive import Gathered, top1_accuracy
from ..losses.mlm import MLMLoss
from ..losses.nn_queue import NearestNeighborQueue
from ..losses.simsiam import SimSiamLoss
from ..models.heads import MLMHead, SimSiamPredictor, SimSiamProjector
from ..models.towers import encode_image_with_tokens, encode_text_with_tokens
from ..distributed import get_rank
from .base import Method


class DeCLIP(Method):
    def __init__(self, cfg: Config, clip=None):
        super().__init__(cfg, clip)
        m, d = cfg.method, cfg.model.embed_dim
        self.w = {"clip": m.clip_weight, "simsiam": m.simsiam_weight, "mlm": m.mlm_weight, "nn": m.nn_weight}
        if self.w["simsiam"] > 0:
            self.projector = SimSiamProjector(d, m.simsiam_proj_dim)
            self.predictor = SimSiamPredictor(m.simsiam_proj_dim, m.simsiam_pred_dim)
            self.simsiam = SimSiamLoss()
        if self.w["mlm"] > 0:
            self.mlm_head = MLMHead(cfg.model.text.width, cfg.model.text.vocab_size)
            self.mlm = MLMLoss()
        if self.w["nn"] > 0:
            self.queue = NearestNeighborQueue(m.queue_size, d, seed=cfg.train.seed + get_rank(),
                                              track_ids=m.nn_exclude_self)
        assert cfg.model.text.vocab_size >= VOCAB_SIZE

    @staticmethod
    def contrasts_plain_text(m) -> bool:
        """Whether the contrastive terms read the unmasked caption ("text_plain") rather than the masked one."""
        return m.mlm_weight > 0 and m.contrast_text == "plain"

    @staticmethod
    def data_spec(cfg: Config) -> DataSpec:
        m = cfg.method
        return DataSpec(n_views=2, augment=m.augment, text=TextSpec(
            context_length=cfg.model.text.context_length,
            eda=(m.clip_weight > 0 and m.multi_view) or m.nn_weight > 0, eda_ops=tuple(m.eda_ops),
            mlm=m.mlm_weight > 0, mask_prob=m.mask_prob,
            keep_plain=DeCLIP.contrasts_plain_text(m)))

    def forward(self, batch):
        return self.supervise(batch, self.encode(batch))

    def encode(self, batch, image_tokens: bool = False, text_tokens: bool = False) -> dict:
        """Both image views in one forward (2B images) and every caption in one text forward. ``image_tokens``
        / ``text_tokens`` also return the dense tokens (DeFILIP): "image_tokens" of both views, "text_tokens"
        of every caption encoded, "text_ids" the ids encoded (the contrastive captions first)."""
        w = self.w
        images = batch["images"]  # [B, 2, C, H, W]
        b = images.shape[0]
        both = images.transpose(0, 1).reshape(2 * b, *images.shape[2:])
        out = {"b": b}
        if image_tokens:
            feats, out["image_tokens"] = encode_image_with_tokens(self.clip, both)
        else:
            feats = self.clip.encode_image(both)
        out["f1"], out["f2"] = feats[:b], feats[b:]
        out["use_aug"] = (w["clip"] > 0 and self.cfg.method.multi_view) or w["nn"] > 0
        plain = self.contrasts_plain_text(self.cfg.method)
        contrast_ids = [batch["text_plain"] if plain else batch["text"]] + (
            [batch["text_aug"]] if out["use_aug"] else [])
        out["n_contrast"] = n_contrast = b * len(contrast_ids)
        out["text_ids"] = text_ids = torch.cat(contrast_ids + ([batch["text"]] if plain else []))  # masked last
        if w["mlm"] > 0 or text_tokens:
            out["text_feats"], tokens = encode_text_with_tokens(self.clip, text_ids)
            out["mlm_tokens"] = tokens[n_contrast:] if plain else tokens[:b]
            out["text_tokens"] = tokens
        else:
            out["text_feats"] = self.clip.encode_text(text_ids)
        return out

    def supervise(self, batch, enc: dict):
        """DeCLIP's four supervisions from the features ``encode`` returned: (losses, metrics)."""
        w, gather = self.w, not self.cfg.method.local_loss
        b, f1, f2, n_contrast, use_aug = enc["b"], enc["f1"], enc["f2"], enc["n_contrast"], enc["use_aug"]
        multi_view = self.cfg.method.multi_view
        losses, metrics = {}, {}
        scale = self.contrastive.scale(self.clip)
        metrics.update(self.contrastive.metrics(scale))
        i1, i2 = F.normalize(f1, dim=-1), F.normalize(f2, dim=-1)
        t_all = F.normalize(enc["text_feats"][:n_contrast], dim=-1)
        t, t_aug = t_all[:b], (t_all[b:] if use_aug else None)
        g_i1, g_i2 = Gathered(i1, gather=gather), Gathered(i2, gather=gather)
        offset = g_i1.offset

        if w["clip"] > 0 and not multi_view:  # ablation: one image view x the original caption
            loss, logits = self.contrastive(g_i1, Gathered(t, gather=gather), scale)
        elif w["clip"] > 0:
            g_t, g_ta = Gathered(t, gather=gather), Gathered(t_aug, gather=gather)
            l11, logits = self.contrastive(g_i1, g_t, scale)
            l21, _ = self.contrastive(g_i2, g_t, scale)
            l12, _ = self.contrastive(g_i1, g_ta, scale)
            l22, _ = self.contrastive(g_i2, g_ta, scale)
            loss = (l11 + l21 + l12 + l22) / 4
        if w["clip"] > 0:
            losses["clip"] = w["clip"] * loss
            metrics["clip_raw"] = loss.detach()
            metrics["clip_acc"] = top1_accuracy(logits, offset)

        if w["simsiam"] > 0:
            z1, z2 = self.projector(f1), self.projector(f2)  # views apart: BN statistics per view
            p1, p2 = self.predictor(z1), self.predictor(z2)
            loss = self.simsiam(p1, p2, z1, z2)
            losses["simsiam"] = w["simsiam"] * loss
            metrics["simsiam_raw"] = loss.detach()

        if w["mlm"] > 0:
            loss, acc = self.mlm(enc["mlm_tokens"], batch["mlm_labels"], self.mlm_head, batch.get("mlm_index"))
            losses["mlm"] = w["mlm"] * loss
            metrics["mlm_raw"], metrics["mlm_acc"] = loss.detach(), acc

        if w["nn"] > 0:
            ids = batch["index"] if self.cfg.method.nn_exclude_self else None  # dataset index of each pair
            nn_t, nn_ta = self.queue.nearest(t, ids), self.queue.nearest(t_aug, ids)  # the bank before this step
            if self.training:
                self.queue.enqueue(t_aug, ids)
                self.queue.enqueue(t, ids)
            nn_t = Gathered(nn_t, with_grad=False, gather=gather).all
            nn_ta = Gathered(nn_ta, with_grad=False, gather=gather).all
            nn_loss = self.contrastive.image_to_text  # image -> neighbour only, softmax or sigmoid
            loss = sum(0.5 * (nn_loss(i, nn_t, offset, scale) + nn_loss(i, nn_ta, offset, scale))
                       for i in (i1, i2)) / 2
            warmup = self.cfg.method.nn_warmup_steps
            if warmup > 0:  # held back while the bank fills: a 0/1 factor on the device (an `if` would sync)
                loss = loss * (self.steps_done >= warmup).to(loss.dtype)
            losses["nn"] = w["nn"] * loss
            metrics["nn_raw"] = loss.detach()
        return losses, metrics
