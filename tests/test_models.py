import pytest
import torch

from declip.config import load_config
from declip.data.tokenizer import tokenize
from declip.vocab import EOT_ID, MASK_ID
from declip.models.towers import build_clip, encode_text_with_tokens


@pytest.mark.parametrize("preset,size,dim", [("tiny-vit", 64, 128), ("tiny-rn", 64, 128), ("vit-b-32", 224, 512),
                                             ("rn50", 224, 1024)])
def test_tower_output_shapes(preset, size, dim):
    torch.manual_seed(0)
    cfg = load_config(None, [f"model.preset={preset}"])
    clip = build_clip(cfg.model).eval()
    with torch.no_grad():
        img = clip.encode_image(torch.randn(2, 3, size, size))
        txt, tokens = encode_text_with_tokens(clip, tokenize(["a dog", "a red circle"]))
    assert img.shape == (2, dim) and txt.shape == (2, dim)
    assert tokens.shape == (2, 77, cfg.model.text.width)
    assert clip.text.token_embedding.num_embeddings == 49409  # BPE + mask token
    assert isinstance(clip.text.text_projection, torch.nn.Linear) and clip.text.text_projection.bias is not None
    if cfg.model.vision.kind == "vit":
        assert not clip.visual.conv1.weight.requires_grad  # DeCLIP freezes the patch embedding
    if preset == "rn50":
        assert clip.visual.attnpool.num_heads == 32 and clip.visual.layer4[-1].bn3.num_features == 2048


def test_text_pools_at_eot_even_with_mask_tokens():
    """The mask id (49408) is larger than EOT (49407): argmax pooling would pick the mask position."""
    torch.manual_seed(0)
    clip = build_clip(load_config(None).model).eval()
    ids = tokenize(["a small red circle"])
    ids[0, 2] = MASK_ID
    eot = int((ids[0] == EOT_ID).nonzero())
    with torch.no_grad():
        pooled, tokens = encode_text_with_tokens(clip, ids)
        expected = clip.text.text_projection(tokens[:, eot])
    torch.testing.assert_close(pooled, expected)
