"""Image and text towers: open_clip's own modules, configured the DeCLIP way.

We build an ``open_clip.model.CustomTextCLIP`` so the trained towers ARE an open_clip model: export is a
config dump plus a state dict, and open_clip's zero-shot helpers work on it unchanged. The DeCLIP twists:
the vocabulary gets one extra id for the MLM mask token (OpenAI's SOT/EOT ids stay, so OpenAI/OpenCLIP text
weights remain usable), text pooling happens at the EOT id (the default argmax-of-ids would pick the mask
token, whose id is larger), the text projection is a Linear with bias, and the ViT patch embedding is frozen.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from open_clip.model import CustomTextCLIP

from ..config import LOGIT_SCALE_MAX, ModelConfig
from ..vocab import EOT_ID

LOGIT_SCALE_INIT = math.log(1 / 0.07)


def open_clip_model_cfg(cfg: ModelConfig) -> dict:
    """The open_clip ``model_cfg`` dict that rebuilds exactly these towers (also written by export)."""
    v, t = cfg.vision, cfg.text
    vision = {"image_size": v.image_size, "width": v.width, "head_width": v.head_width}
    if v.kind == "vit":
        vision.update(layers=v.layers, patch_size=v.patch_size)
    else:
        vision.update(layers=list(v.layers))
    text = {
        "context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads,
        "layers": t.layers, "pool_type": "eos", "eos_id": EOT_ID, "proj_bias": True,
    }
    return {"embed_dim": cfg.embed_dim, "quick_gelu": cfg.quick_gelu, "vision_cfg": vision, "text_cfg": text,
            "custom_text": True}


def build_clip(cfg: ModelConfig) -> CustomTextCLIP:
    mc = open_clip_model_cfg(cfg)
    if cfg.vision.patch_dropout > 0:  # open_clip's PatchDropout (training only); not in the export's config
        mc["vision_cfg"]["patch_dropout"] = cfg.vision.patch_dropout
    model = CustomTextCLIP(embed_dim=mc["embed_dim"], vision_cfg=mc["vision_cfg"], text_cfg=mc["text_cfg"],
                           quick_gelu=mc["quick_gelu"], init_logit_scale=LOGIT_SCALE_INIT)
    if cfg.vision.kind == "vit":
        if cfg.vision.init == "reference":  # else open_clip's own VisionTransformer init, as built
            init_vit_blocks(model.visual)
            nn.init.normal_(model.visual.positional_embedding, std=0.01)
        if cfg.vision.freeze_conv1:
            model.visual.conv1.requires_grad_(False)
    return model


@torch.no_grad()
def init_vit_blocks(visual: nn.Module) -> None:
    """CLIP's normal init on the ViT's transformer blocks, as the reference applies it to both towers:
    attention in-projection std width^-0.5, out-projection and MLP c_proj std width^-0.5 (2 layers)^-0.5,
    MLP c_fc std (2 width)^-0.5. open_clip's VisionTransformer.init_parameters is a no-op (PyTorch defaults:
    out_proj std ~0.021 instead of ~0.0074 at ViT-B/32); its text tower gets exactly this init."""
    tr = visual.transformer
    proj_std = (tr.width ** -0.5) * ((2 * tr.layers) ** -0.5)
    attn_std = tr.width ** -0.5
    fc_std = (2 * tr.width) ** -0.5
    for block in tr.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


def encode_text_with_tokens(clip: CustomTextCLIP, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One text forward giving both the pooled (projected, EOT) feature and the per-token features after
    ln_final, which the MLM head reads. Attention stays causal, as in the reference."""
    text = clip.text
    previous = text.output_tokens
    text.output_tokens = True
    try:
        pooled, tokens = text(ids)
    finally:
        text.output_tokens = previous
    return pooled, tokens


@torch.no_grad()
def clamp_logit_scale(scale: torch.Tensor, floor: float) -> None:
    """log(logit scale) into [floor, 6], in place: the reference's [3, 6] keeps the effective scale in [20.1, 100]
    (``model.logit_scale_min`` sets the floor; open_clip's is 0). The towers' scale and FILIP's dense one both go
    through here (``Method.softmax_scales``)."""
    scale.clamp_(floor, LOGIT_SCALE_MAX)


def _image_parts(clip: CustomTextCLIP, images: torch.Tensor, embed: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image forward through the tower's parts: (embedding, trunk feature before the projection, dense
    tokens). The tower's forward is bypassed (a compiled tower runs uncompiled here) because open_clip returns
    neither the pre-projection feature nor the reference's dense tokens. ``embed=n`` embeds only the first n
    images (SLIP's SSL views need the trunk alone; a ResNet's attention pool on them would be wasted work).
    ViT: the transformer's output; the class token through ln_post (LayerNorm is per token: open_clip's
    ln_post(x)[:, 0]) is the trunk, projected by ``proj``; the patch tokens BEFORE ln_post are the dense tokens.
    ResNet: layer4's map; the attention pool (the projection is inside it) gives the embedding, its spatial mean
    the trunk, its H*W positions the dense tokens. With ``model.vision.patch_dropout`` a training-mode ViT drops
    patches in ``_embeds`` (open_clip's PatchDropout; the class token always stays): the trunk is then the class
    token over the kept patches and the dense tokens are the kept patches only; eval mode keeps them all."""
    v = clip.visual
    if hasattr(v, "attnpool"):  # ModifiedResNet
        x = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(images.to(v.conv1.weight.dtype))))))
        return v.attnpool(x[:embed]), x.mean(dim=(2, 3)), x.flatten(2).transpose(1, 2)
    x = v.transformer(v._embeds(images))
    trunk = v.ln_post(x[:, 0])
    return (trunk[:embed] @ v.proj if v.proj is not None else trunk[:embed]), trunk, x[:, 1:]


def encode_image_with_trunk(clip: CustomTextCLIP, images: torch.Tensor, embed: int | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedding (of the first ``embed`` images; all by default) and the feature before the projection,
    which SLIP's SimCLR head reads (the reference's ``feature_dim``: 768 for ViT-B/32, 2048 for RN50), in one
    image forward."""
    embedding, trunk, _ = _image_parts(clip, images, embed)
    return embedding, trunk


def encode_image_with_tokens(clip: CustomTextCLIP, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedding and FILIP's dense tokens (Sense-GVT/DeCLIP prototype/model/image_encoder/: ViT patch tokens,
    CLS excluded, before ln_post; ResNet layer4's positions, before the attention pool), in one image forward."""
    embedding, _, tokens = _image_parts(clip, images)
    return embedding, tokens


def trunk_dim(cfg: ModelConfig) -> int:
    """The width of the trunk feature and of the dense tokens for these towers (ViT: width; ResNet: 32 x width,
    layer4's channels)."""
    return cfg.vision.width if cfg.vision.kind == "vit" else cfg.vision.width * 32


def text_token_mask(ids: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: the positions of a caption up to and including its EOT (SOT, words, EOT); False on padding.
    Found from the EOT position, not ``ids != 0``: id 0 is a real BPE token ("!")."""
    eot = (ids == EOT_ID).int().argmax(dim=1, keepdim=True)
    return torch.arange(ids.shape[1], device=ids.device)[None] <= eot
