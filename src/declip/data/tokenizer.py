"""CLIP BPE tokenizer (open_clip's, shipped inside its wheel) with DeCLIP's extra mask token.

OpenAI's ids stay where they are (SOT 49406, EOT 49407) and the mask token is appended as 49408, so the
vocabulary is 49409 and OpenAI/OpenCLIP text weights remain loadable (the reference shifted SOT/EOT by one).
"""
from __future__ import annotations

import functools

import torch

from ..vocab import EOT_ID, SOT_ID


@functools.lru_cache(maxsize=4)
def get_tokenizer(context_length: int = 77):
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer(context_length=context_length)
    assert tok.sot_token_id == SOT_ID and tok.eot_token_id == EOT_ID, "unexpected CLIP BPE vocabulary"
    return tok


def tokenize(texts: str | list[str], context_length: int = 77) -> torch.Tensor:
    """[N, context_length] int64: SOT + BPE (truncated to context-2) + EOT, zero padded."""
    if isinstance(texts, str):
        texts = [texts]
    return get_tokenizer(context_length)(texts, context_length=context_length)
