"""FILIP's token-wise late-interaction loss (Yao et al. 2021; Sense-GVT/DeCLIP prototype/model/filip.py).

Per local pair, only the k image tokens with the largest summed similarity to their own caption's words (and the
k words with the largest summed similarity to their own image's tokens) are kept and gathered. The logit of
local image i against gathered caption j is the mean over ALL of image i's tokens of the max over caption j's
kept words; the text -> image logit mirrors it. Then the symmetric InfoNCE, as for the global features.

Padding (the positions after EOT) never takes part: it is left out of the top-k sums, can never be kept, never
wins a max and does not count in a mean (the reference averages over all 77 positions, padding included).

Memory: the similarities of one side's local tokens against the other side's gathered kept tokens are
B_local x T x B_global x k. They are computed in chunks of ``chunk`` gathered columns, and the scale is applied
after the max (it is > 0), so autograd keeps per chunk only the argmax indices (B_local x T x chunk, int64),
not the similarity block: see ``dense_memory_bytes``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .contrastive import Gathered, local_labels

NEG = float("-inf")


def select_topk(own_sim: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor, k: int):
    """The k tokens of each sample with the largest summed similarity ``own_sim`` [B, N] (invalid tokens never
    chosen while valid ones remain); returns the kept tokens [B, k', D] and whether each is valid [B, k']."""
    k = min(k, tokens.shape[1])
    idx = own_sim.masked_fill(~valid, NEG).topk(k, dim=1).indices
    kept = tokens.gather(1, idx[..., None].expand(-1, -1, tokens.shape[2]))
    return kept, valid.gather(1, idx)


def late_interaction(query: torch.Tensor, query_valid: torch.Tensor | None, keys: torch.Tensor,
                     keys_valid: torch.Tensor, chunk: int) -> torch.Tensor:
    """[B, Bg]: for each local sample b and gathered sample g, the mean over b's valid tokens of the max over
    g's valid kept tokens of the cosine similarity. ``query`` [B, T, D]; ``keys`` [Bg, k, D]; chunked over g."""
    bias = torch.zeros(keys_valid.shape, dtype=query.dtype, device=query.device).masked_fill(~keys_valid, NEG)
    step = chunk if chunk > 0 else keys.shape[0]
    cols = []
    for s in range(0, keys.shape[0], step):
        sim = torch.einsum("btd,gkd->btgk", query, keys[s:s + step]) + bias[s:s + step]
        cols.append(sim.max(dim=3).values)  # [B, T, g]; max(dim) saves only its indices (amax: the block)
    best = torch.cat(cols, dim=2)
    if query_valid is None:
        return best.mean(dim=1)
    w = query_valid.to(best.dtype)[..., None]
    return (best * w).sum(dim=1) / w.sum(dim=1)


class TokenwiseInfoNCE(nn.Module):
    """The FILIP dense loss on projected (not yet normalised) image tokens [B, Ni, D] and text tokens [B, Nt, D]
    with the text's validity mask [B, Nt]; ``scale`` is the dense logit scale (exp of its parameter)."""

    def __init__(self, topk: int = 16, chunk: int = 256):
        super().__init__()
        self.topk, self.chunk = topk, chunk

    def logits(self, image: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor, scale: torch.Tensor,
               gather: bool = True):
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        image_valid = torch.ones(image.shape[:2], dtype=torch.bool, device=image.device)
        with torch.no_grad():  # only chooses indices: the kept tokens themselves carry the gradient
            own = torch.einsum("bid,btd->bit", image, text) * text_valid[:, None].to(image.dtype)  # padding: 0
        img_kept, img_kept_valid = select_topk(own.sum(dim=2), image, image_valid, self.topk)
        txt_kept, txt_kept_valid = select_topk(own.sum(dim=1), text, text_valid, self.topk)
        g_img, g_txt = Gathered(img_kept, gather=gather), Gathered(txt_kept, gather=gather)
        g_img_valid = Gathered(img_kept_valid.to(torch.uint8), with_grad=False, gather=gather).all.bool()
        g_txt_valid = Gathered(txt_kept_valid.to(torch.uint8), with_grad=False, gather=gather).all.bool()
        logits_i = scale * late_interaction(image, None, g_txt.all, g_txt_valid, self.chunk)
        logits_t = scale * late_interaction(text, text_valid, g_img.all, g_img_valid, self.chunk)
        return logits_i, logits_t, g_img.offset

    def forward(self, image, text, text_valid, scale, gather: bool = True):
        logits_i, logits_t, offset = self.logits(image, text, text_valid, scale, gather)
        labels = local_labels(image.shape[0], image.device, offset)
        loss = (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2
        return loss, logits_i, offset


def dense_memory_bytes(b_local: int, t: int, b_global: int, k: int, chunk: int, elem: int = 4) -> dict[str, int]:
    """Memory of one direction of the dense term (query side with ``t`` tokens): ``block`` is the transient
    similarity block of one chunk, elem * B_local * T * chunk * k (chunk = B_global when 0); ``saved`` what
    autograd keeps until backward, the int64 argmax indices plus the fp max values, (8 + elem) * B_local * T *
    B_global. Peak of the direction = block + saved."""
    c = b_global if chunk <= 0 else min(chunk, b_global)
    block = elem * b_local * t * c * k
    saved = (8 + elem) * b_local * t * b_global
    return {"block": block, "saved": saved, "peak": block + saved}
