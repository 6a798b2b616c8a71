"""Token-wise (FILIP late-interaction) similarity for zero-shot and retrieval: ``eval.similarity=token``.

Why: a FILIP/DeFILIP model is trained to match images and captions token by token (losses/filip.py); its
pooled features are trained only by the global term (and FILIP's own configs give that term weight 0). The
FILIP paper (Yao et al. 2021, sec. 3.1.2 and eq. 4) scores zero-shot classes with the image-side token-wise
similarity and ensembles prompts by averaging that similarity over them (token features of different prompts
cannot be averaged into one class feature as CLIP does). Here, as in training:

- image tokens: the tower's dense tokens (``encode_image_with_tokens``) through the dense image head,
  L2-normalised; text tokens: ln_final's token features through the dense text head, L2-normalised, padding
  (after EOT) masked by ``text_token_mask``; SOT and EOT take part, as in training.
- i2t(image, text) = mean over ALL the image's tokens of the max over the text's valid tokens of the cosine;
  t2i(text, image) = mean over the text's valid tokens of the max over the image's tokens. No top-k: training's
  top-k selection (``method.filip_topk``) is a cost saving of the gathered loss, not part of the score.
- zero-shot: score(image, class) = mean over the class's prompts of i2t (the paper's choice; not symmetrised).
- retrieval: image -> text ranks captions by i2t, text -> image ranks images by t2i.
- the dense logit scale is left out: a positive factor changes no ranking.

Memory is bounded by chunking over both sides (``chunk`` x Tq x ``chunk`` x Tk floats per block) and by
streaming the images: only the score rows of each image batch are kept, never every image's tokens.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.tokenizer import tokenize
from ..errors import CheckpointError
from ..losses.filip import late_interaction
from ..models.heads import DenseHeads
from ..models.towers import encode_image_with_tokens, encode_text_with_tokens, text_token_mask, trunk_dim
from .common import EvalDataError, eval_mode

DENSE_PREFIX = "dense.heads."  # FILIP/DeFILIP's DenseTerm.heads inside the method state dict
TOKEN_CHUNK = 64  # rows and columns per similarity block: 64 x 50 x 64 x 77 floats = 63 MB at ViT-B/32


class TokenTowers(nn.Module):
    """The towers plus FILIP's dense heads. ``encode_image`` / ``encode_text`` stay the global features (the
    linear probe reads them); ``image_tokens`` / ``text_tokens`` give the normalised dense tokens."""

    def __init__(self, clip: nn.Module, heads: DenseHeads):
        super().__init__()
        self.clip, self.heads = clip, heads

    def encode_image(self, images):
        return self.clip.encode_image(images)

    def encode_text(self, ids):
        return self.clip.encode_text(ids)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, Ni, D] L2-normalised dense image tokens (float32)."""
        return F.normalize(self.heads.image(encode_image_with_tokens(self.clip, images)[1]).float(), dim=-1)

    def text_tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, T, D] L2-normalised dense text tokens (float32), [B, T] valid: SOT .. EOT)."""
        tokens = self.heads.text(encode_text_with_tokens(self.clip, ids)[1]).float()
        return F.normalize(tokens, dim=-1), text_token_mask(ids)


def load_dense_heads(state: dict, cfg, checkpoint) -> DenseHeads:
    """FILIP's dense heads from a checkpoint's method state (``dense.heads.*``), sized by its config."""
    weights = {k[len(DENSE_PREFIX):]: v for k, v in state["model"].items() if k.startswith(DENSE_PREFIX)}
    if not weights:
        raise CheckpointError(f"{checkpoint}: eval.similarity=token: no '{DENSE_PREFIX}*' weights in the "
                              f"checkpoint (method.name={cfg.method.name}); use eval.similarity=global")
    heads = DenseHeads(trunk_dim(cfg.model), cfg.model.text.width, cfg.method.filip_dim)
    heads.load_state_dict(weights)
    return heads


def token_towers(clip: nn.Module, dense: DenseHeads | None) -> TokenTowers:
    """The towers for token-wise scoring; a clear error when there are no dense heads to read."""
    if isinstance(clip, TokenTowers):
        return clip
    if dense is None:
        raise EvalDataError("eval.similarity=token needs FILIP's dense heads, which only a declip checkpoint of "
                            "filip/defilip (method.filip_weight > 0) holds; an exported open_clip model or the "
                            "towers alone have none: evaluate the checkpoint (declip eval --checkpoint CKPT) or "
                            "use eval.similarity=global")
    device = next(clip.parameters()).device
    return TokenTowers(clip, dense.to(device))


def late_interaction_matrix(query: torch.Tensor, query_valid: torch.Tensor | None, keys: torch.Tensor,
                            keys_valid: torch.Tensor | None, chunk: int = TOKEN_CHUNK) -> torch.Tensor:
    """[Nq, Nk]: mean over each query's valid tokens of the max over each key's valid tokens of the dot
    product (cosine for normalised tokens). Blocks of ``chunk`` queries x ``chunk`` keys (0 = one block);
    the same numbers whatever the chunk."""
    if keys_valid is None:
        keys_valid = torch.ones(keys.shape[:2], dtype=torch.bool, device=keys.device)
    step_q = chunk if chunk > 0 else max(query.shape[0], 1)
    step_k = chunk if chunk > 0 else max(keys.shape[0], 1)
    rows = []
    for q in range(0, query.shape[0], step_q):
        qv = None if query_valid is None else query_valid[q:q + step_q]
        rows.append(torch.cat([late_interaction(query[q:q + step_q], qv, keys[k:k + step_k],
                                                keys_valid[k:k + step_k], 0)
                               for k in range(0, keys.shape[0], step_k)], dim=1))
    return torch.cat(rows) if rows else query.new_zeros(0, keys.shape[0])


def text_token_features(towers: TokenTowers, texts: list[str], device, batch_size: int = 256,
                        context_length: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, T', D], [N, T'] valid) on ``device``; T' is the longest caption's length (SOT .. EOT), so the
    padding columns no caption uses are dropped, not stored."""
    feats, valid = [], []
    with eval_mode(towers):
        for s in range(0, len(texts), batch_size):
            tokens, mask = towers.text_tokens(tokenize(texts[s:s + batch_size], context_length).to(device))
            feats.append(tokens)
            valid.append(mask)
    feats, valid = torch.cat(feats), torch.cat(valid)
    used = int(valid.any(dim=0).nonzero().max()) + 1
    return feats[:, :used], valid[:, :used]


def zero_shot_scorer(towers: TokenTowers, classnames, templates, device, context_length: int = 77):
    """``encode(pixels) -> [B, C]``: per class, the mean over its prompts of the i2t token-wise similarity."""
    prompts = [t.format(c) for c in classnames for t in templates]
    text, valid = text_token_features(towers, prompts, device, context_length=context_length)

    def encode(pixels):
        scores = late_interaction_matrix(towers.image_tokens(pixels), None, text, valid)  # [B, C * P]
        return scores.view(scores.shape[0], len(classnames), len(templates)).mean(dim=2)

    return encode


def retrieval_scorer(towers: TokenTowers, texts: list[str], device, context_length: int = 77):
    """``encode(pixels) -> [B, 2N]``: each image's i2t scores against the N captions, then the captions' t2i
    scores against that image (one image batch at a time: only the score rows are kept)."""
    text, valid = text_token_features(towers, texts, device, context_length=context_length)

    def encode(pixels):
        image = towers.image_tokens(pixels)
        i2t = late_interaction_matrix(image, None, text, valid)
        t2i = late_interaction_matrix(text, valid, image, None)
        return torch.cat([i2t, t2i.T], dim=1)

    return encode
