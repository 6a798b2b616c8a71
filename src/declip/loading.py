"""``declip.load(ref)``: a trained model as open_clip objects, ``(model, preprocess, tokenizer)``, from any model
reference declip knows (:mod:`declip.model_ref`, the resolver ``model.init_from`` and ``declip eval`` use too):

- a declip checkpoint (``ckpt_*.pt`` / ``best.pt``): its towers, checksums verified;
- a ``declip export`` folder or any open_clip ``local-dir:`` folder;
- ``hf-hub:ORG/NAME`` through huggingface_hub's cache (offline once cached);
- ``openclip:MODEL/TAG``: open_clip's published weights.

Example::

    import torch, declip
    from PIL import Image

    model, preprocess, tokenizer = declip.load("runs/demo/best.pt")   # or "local-dir:EXPORT", "hf-hub:ORG/NAME"
    image = preprocess(Image.open("cat.jpg")).unsqueeze(0)
    text = tokenizer(["a photo of a cat", "a photo of a dog"])
    with torch.no_grad():
        probs = (model.encode_image(image, normalize=True) @ model.encode_text(text, normalize=True).T
                 * model.logit_scale.exp()).softmax(dim=-1)

``preprocess`` is ``declip eval``'s transform for declip's models (the preprocess_cfg ``declip export`` writes:
shortest side resized to the input size, bilinear, centre crop, ImageNet mean/std), open_clip's own for others;
the model is in eval mode. :func:`load_for_eval` gives ``declip eval`` the towers and a Config for the same refs.
"""
from __future__ import annotations

import torch

from .errors import CheckpointError
from .model_ref import ModelRef, architecture, read_file, resolve


def load(ref: str, device: str | torch.device = "cpu"):
    """``(model, preprocess, tokenizer)`` for ``ref`` (see the module docstring), the model in eval mode on
    ``device``. Errors (a missing or damaged file, an unsafe pickle, an uncached Hub model offline) are one-line
    :class:`declip.errors.CheckpointError`."""
    import open_clip

    model_ref = _resolved(ref, "declip.load")
    if model_ref.kind == "folder":  # exactly what open_clip builds from the folder (the Hub snapshot's too)
        name = f"local-dir:{model_ref.path}"
        model, _, preprocess = open_clip.create_model_and_transforms(name, device=device)
        return model.eval(), preprocess, open_clip.get_tokenizer(name)
    if model_ref.kind == "openclip":
        from open_clip.pretrained import get_pretrained_cfg

        name, tag = model_ref.name.split("/")
        pre = get_pretrained_cfg(name, tag)
        weights = tag if tag == "openai" else str(model_ref.weights)  # open_clip unpacks OpenAI's archive itself
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=weights, device=device, image_mean=pre.get("mean"), image_std=pre.get("std"),
            image_interpolation=pre.get("interpolation"), image_resize_mode=pre.get("resize_mode"))
        return model.eval(), preprocess, open_clip.get_tokenizer(name)
    clip, cfg, _ = load_for_eval(model_ref, device, what="declip.load")
    return clip, eval_preprocess(cfg.model.vision.image_size), declip_tokenizer(cfg.model.text.context_length)


def eval_preprocess(image_size: int):
    """open_clip's transform for ``declip eval``'s preprocess config: what an export's user gets from open_clip."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from .data.views import eval_preprocess_cfg

    return image_transform_v2(PreprocessCfg(**eval_preprocess_cfg(image_size)), is_train=False)


def declip_tokenizer(context_length: int):
    """open_clip's CLIP tokenizer at the towers' context length: declip's ids (it never emits the mask token)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def _resolved(ref: str | ModelRef, what: str) -> ModelRef:
    model_ref = ref if isinstance(ref, ModelRef) else resolve(str(ref), what=what)
    if model_ref.kind == "file":
        read_file(model_ref)  # a declip checkpoint turns kind to "checkpoint" (checksums verified)
    return model_ref


def load_for_eval(ref: str | ModelRef, device="cpu", what: str = "--checkpoint"):
    """(towers in eval mode on ``device``, a Config, the checkpoint payload or None) for ``declip eval``: a declip
    checkpoint as the run saved it; any other reference as declip towers of its architecture (read from its
    config) with its weights, under the default evaluation settings."""
    from .config import config_from_dict
    from .export import load_towers
    from .models.pretrained import load_into_towers, read_weights
    from .models.towers import build_clip

    model_ref = _resolved(ref, what)
    if model_ref.kind == "checkpoint":
        return load_towers(model_ref.path, device)
    arch = architecture(model_ref)
    if not arch:
        raise CheckpointError(f"{what}={model_ref.spec}: not a declip checkpoint, and a bare weights file states no "
                              "architecture: pass the folder it came with (open_clip_config.json + weights)")
    tree: dict = {"model": {}}
    for key, value in arch.items():
        node = tree["model"]
        *sections, name = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    cfg = config_from_dict(tree, {f"model.{k}": f"{model_ref.where}" for k in arch})
    clip = build_clip(cfg.model)
    state, source = read_weights(model_ref)
    load_into_towers(clip, state, source)
    return clip.to(torch.device(device)).eval(), cfg, None
