"""Caption -> token tensors, run in the data workers: BPE, EDA augmentation, BERT-style MLM masking.

All randomness comes from the ``random.Random`` handed in per sample, so a sample's text views depend only on
(seed, epoch, index): reproducible across worker counts and exact on resume.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from ..config import DEFAULT_EDA_OPS
from ..vocab import EOT_ID, IGNORE_INDEX as IGNORE, MASK_ID, NUM_REGULAR_TOKENS, PAD_ID, SOT_ID
from .tokenizer import tokenize

SPECIAL_IDS = (SOT_ID, EOT_ID, MASK_ID, PAD_ID)


def mask_tokens(ids: torch.Tensor, rng: random.Random, prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of one caption: each ordinary token selected with ``prob``; of those 80% -> MASK,
    10% -> a random ordinary token, 10% kept. Labels hold the original id at selected positions, -100
    elsewhere. SOT, EOT, MASK and padding are never selected."""
    masked = ids.clone()
    labels = torch.full_like(ids, IGNORE)
    for pos, tok in enumerate(ids.tolist()):
        if tok in SPECIAL_IDS or rng.random() >= prob:
            continue
        labels[pos] = tok
        r = rng.random()
        if r < 0.8:
            masked[pos] = MASK_ID
        elif r < 0.9:
            masked[pos] = rng.randrange(NUM_REGULAR_TOKENS)
    return masked, labels


@dataclass(frozen=True)
class TextSpec:
    context_length: int = 77
    eda: bool = False
    eda_ops: tuple[str, ...] = DEFAULT_EDA_OPS
    mlm: bool = False
    mask_prob: float = 0.15
    keep_plain: bool = False  # with mlm: also emit the unmasked ids as "text_plain" (method.contrast_text=plain)


@dataclass
class TextPipeline:
    spec: TextSpec
    _eda: object = field(default=None, init=False, repr=False)

    def _augmenter(self):
        if self._eda is None:  # built lazily in each worker: the synonym table loads once per process
            from .eda import EDA

            self._eda = EDA(ops=tuple(self.spec.eda_ops))
        return self._eda

    def __call__(self, caption: str, rng: random.Random) -> dict[str, torch.Tensor]:
        ids = tokenize(caption, self.spec.context_length)[0]
        out = {}
        if self.spec.mlm:
            out["text"], out["mlm_labels"] = mask_tokens(ids, rng, self.spec.mask_prob)
            if self.spec.keep_plain:
                out["text_plain"] = ids
        else:
            out["text"] = ids
        if self.spec.eda:
            out["text_aug"] = tokenize(self._augmenter()(caption, rng), self.spec.context_length)[0]
        return out
