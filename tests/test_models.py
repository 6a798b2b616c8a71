import pytest
import torch

from declip.config import ConfigError, load_config
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


# --- fix 2: CLIP's normal init on the ViT blocks, as on the text blocks -------------------------------------
def test_vit_blocks_get_clip_init_like_the_text_blocks():
    """open_clip's VisionTransformer keeps PyTorch defaults (out_proj std ~0.021 at width 768 whatever the
    depth); the reference applies attn std w^-0.5, proj std w^-0.5 (2L)^-0.5, fc std (2w)^-0.5."""
    torch.manual_seed(0)
    cfg = load_config(None, ["model.preset=vit-b-32"])
    clip = build_clip(cfg.model)
    w, layers = 768, 12
    proj_std, attn_std, fc_std = w ** -0.5 * (2 * layers) ** -0.5, w ** -0.5, (2 * w) ** -0.5
    for block in clip.visual.transformer.resblocks:
        assert abs(block.attn.in_proj_weight.std().item() - attn_std) < 0.05 * attn_std
        assert abs(block.attn.out_proj.weight.std().item() - proj_std) < 0.05 * proj_std
        assert abs(block.mlp.c_fc.weight.std().item() - fc_std) < 0.05 * fc_std
        assert abs(block.mlp.c_proj.weight.std().item() - proj_std) < 0.05 * proj_std
    assert abs(clip.visual.positional_embedding.std().item() - 0.01) < 0.001


def test_vit_open_clip_init_keeps_open_clips_visiontransformer_init():
    """model.vision.init=open_clip (the small-data choice): the blocks keep PyTorch's defaults (Linear: std
    1/sqrt(3 fan_in); attention in-projection: xavier uniform) and the positional embedding open_clip's
    width^-0.5, instead of the reference's 0.0074 / 0.036 / 0.01 at ViT-B/32."""
    torch.manual_seed(0)
    clip = build_clip(load_config(None, ["model.preset=vit-b-32", "model.vision.init=open_clip"]).model)
    w = 768
    for block in clip.visual.transformer.resblocks:
        assert abs(block.attn.out_proj.weight.std().item() - (3 * w) ** -0.5) < 0.05 * (3 * w) ** -0.5
        assert abs(block.attn.in_proj_weight.std().item() - (2 / (4 * w)) ** 0.5) < 0.05 * (2 / (4 * w)) ** 0.5
        assert abs(block.mlp.c_proj.weight.std().item() - (3 * 4 * w) ** -0.5) < 0.05 * (3 * 4 * w) ** -0.5
    assert abs(clip.visual.positional_embedding.std().item() - w ** -0.5) < 0.05 * w ** -0.5
    with pytest.raises(ConfigError, match="model.vision.init"):
        load_config(None, ["model.preset=rn50", "model.vision.init=open_clip"])


# --- fix 4: the logit-scale cap applies to the value, not the gradient --------------------------------------
def test_logit_scale_cap_keeps_the_gradient():
    """exp(5) = 148 > 100: the value is capped at 100 but d scale / d param stays exp(5), so the optimizer can
    bring the scale back down (a hard clamp gives a zero gradient and the scale is stuck)."""
    import math

    from declip.losses.contrastive import logit_scale_value

    clip = build_clip(load_config(None).model)
    with torch.no_grad():
        clip.logit_scale.fill_(5.0)
    scale = logit_scale_value(clip)
    assert scale.item() == pytest.approx(100.0)
    scale.backward()
    assert clip.logit_scale.grad.item() == pytest.approx(math.exp(5.0), rel=1e-5)
    clip.logit_scale.grad = None
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(1 / 0.07))
    scale = logit_scale_value(clip)
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    scale.backward()
    assert clip.logit_scale.grad.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_logit_scale_floor_is_the_reference_unless_set():
    """After each step log(scale) is clamped into [model.logit_scale_min, 6]: the reference's floor 3 lifts
    the init 1/0.07 (log 2.66) to 20.1 at once; open_clip's floor 0 leaves it; the ceiling stays 6."""
    import math

    from declip.methods import build_method

    for floor, expected in ((None, 3.0), (0.0, math.log(1 / 0.07))):
        cfg = load_config(None, ["method.name=clip"] + ([] if floor is None else [f"model.logit_scale_min={floor}"]))
        method = build_method(cfg)
        method.after_step()
        assert method.clip.logit_scale.item() == pytest.approx(expected, rel=1e-6)
        with torch.no_grad():
            method.clip.logit_scale.fill_(7.0)
        method.after_step()
        assert method.clip.logit_scale.item() == pytest.approx(6.0)
    with pytest.raises(ConfigError, match="model.logit_scale_min"):
        load_config(None, ["model.logit_scale_min=-1"])
