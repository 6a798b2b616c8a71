"""``model.init_from``: start the towers from trained open_clip weights instead of from scratch.

Why: a small-data user almost always starts from a pretrained model (open_clip's ``--pretrained``). The towers
ARE an open_clip ``CustomTextCLIP`` (models/towers.py), so a checkpoint of the same architecture loads key for
key, with three adaptations, each logged:

- an open_clip ``CLIP`` (the usual class: text tower at the top level, ``text_projection`` a bare matrix) is
  renamed into ``text.*``; its projection becomes our Linear's weight (transposed) with a zero bias, which is
  the same function;
- open_clip's vocabulary has 49,408 ids, ours 49,409 (the MLM mask token): the 49,408 rows are copied and the
  mask token's row keeps its fresh initialisation (open_clip's tokenizer never emits it);
- the training heads (SimSiam projector/predictor, MLM head) are not in any open_clip model: they start fresh.

Sources: a file saved with ``torch.save`` (a state dict, possibly under ``state_dict``, possibly with
``module.`` prefixes) or a ``.safetensors`` file; an open_clip ``local-dir:`` folder (as ``declip export``
writes it); ``openclip:MODEL/TAG`` (open_clip's published weights: needs the network or its cache). Shapes
are checked before anything is copied: the error names the first tensor that does not fit. A resumed run
never reads it (the trainer calls this on fresh runs only): the checkpoint wins.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError
from .open_clip_files import CONFIG_NAME, WEIGHTS_NAME, tower_state_dict

OPENCLIP_PREFIX = "openclip:"
LOCAL_DIR_PREFIX = "local-dir:"
FOLDER_WEIGHTS = (WEIGHTS_NAME, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                  "open_clip_model.bin")  # in open_clip's own order of preference
TOKEN_EMBEDDING = "text.token_embedding.weight"
CLIP_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.")  # open_clip CLIP's


def read_weights(spec: str) -> tuple[dict[str, torch.Tensor], str]:
    """(a state dict in open_clip key names, the file it came from) for a ``model.init_from`` value."""
    if spec.startswith(OPENCLIP_PREFIX):
        return _published(spec)
    path = Path(spec.removeprefix(LOCAL_DIR_PREFIX))
    if path.is_dir():
        found = [path / name for name in FOLDER_WEIGHTS if (path / name).is_file()]
        if not found:
            raise CheckpointError(f"model.init_from={spec}: no {' or '.join(FOLDER_WEIGHTS[::2])} in the folder "
                                  f"(an open_clip local-dir: folder holds {CONFIG_NAME} and the weights)")
        path = found[0]
    return _load_file(path), str(path)


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    from open_clip.factory import load_state_dict  # safetensors or torch.save; 'state_dict' key; 'module.'

    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickle, zip and safetensors each raise their own)
        raise CheckpointError(f"model.init_from: cannot read {path} as weights ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); a declip training "
                              "checkpoint loads once exported (declip export CKPT DIR)") from None
    if isinstance(state, dict) and "model" in state and "config" in state:  # a declip training checkpoint
        state = tower_state_dict(state["model"])
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"model.init_from: {path} holds no state dict of tensors")
    return state


def _published(spec: str) -> tuple[dict[str, torch.Tensor], str]:
    """open_clip's published weights by ``MODEL/TAG``; offline this fails in one line, before any model is built."""
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    name, tag = spec[len(OPENCLIP_PREFIX):].split("/", 1)
    cfg = get_pretrained_cfg(name, tag)
    if not cfg:
        raise CheckpointError(f"model.init_from={spec}: open_clip publishes no '{tag}' weights for {name} "
                              "(open_clip.list_pretrained() lists the pairs)")
    try:
        path = download_pretrained(cfg)
    except Exception as e:  # noqa: BLE001  (hub, HTTP and offline-mode errors differ by backend)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"model.init_from={spec}: cannot download open_clip's weights ({type(e).__name__}: "
                              f"{first[:200]}); offline (HF_HUB_OFFLINE=1) or without network, download them "
                              "elsewhere and pass the file or a local-dir: folder") from None
    if tag == "openai":  # a TorchScript archive: open_clip's own loader unpacks it
        return open_clip.create_model(name, pretrained=tag).state_dict(), path
    return _load_file(Path(path)), path


def to_custom_text_names(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """An open_clip ``CLIP`` state dict in ``CustomTextCLIP`` names (ours); a CustomTextCLIP's is unchanged."""
    if "text_projection" not in state:
        return state, []
    out = {}
    for key, value in state.items():
        if key == "text_projection":  # x @ P (width x embed) == Linear(weight P^T, bias 0)
            out["text.text_projection.weight"] = value.t().contiguous()
            out["text.text_projection.bias"] = torch.zeros(value.shape[1], dtype=value.dtype)
        elif key.startswith(CLIP_TEXT_KEYS):
            out[f"text.{key}"] = value
        elif key != "attn_mask":
            out[key] = value
    return out, ["open_clip CLIP layout: text tower renamed, its projection matrix as a Linear with zero bias"]


def load_into_towers(clip: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Copy ``state`` into the towers after checking every shape; returns what was adapted (for the log)."""
    state, notes = to_custom_text_names(state)
    own = clip.state_dict()
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state]
    if unexpected or missing:
        which = f"has {unexpected[0]!r}, which these towers lack" if unexpected else f"lacks {missing[0]!r}"
        raise CheckpointError(f"model.init_from: {source} {which} ({len(unexpected)} unexpected, {len(missing)} "
                              "missing tensors): not an open_clip model of this kind (ViT/ResNet, text tower)")
    merged = {}
    for key, target in own.items():
        value = state[key]
        if key == TOKEN_EMBEDDING and value.shape[0] == target.shape[0] - 1 and value.shape[1:] == target.shape[1:]:
            rows = target.clone()
            rows[: value.shape[0]] = value.to(rows.dtype)
            merged[key] = rows
            notes.append(f"{key}: {value.shape[0]} rows copied, the mask token's row ({value.shape[0]}) fresh")
        elif value.shape != target.shape:
            raise CheckpointError(f"model.init_from: {source}: {key} is {tuple(value.shape)} there but "
                                  f"{tuple(target.shape)} here; set model.* (preset, widths, layers, image_size, "
                                  "context_length) to the checkpoint's architecture")
        else:
            merged[key] = value
    clip.load_state_dict(merged, strict=True)
    return notes


def init_towers(method: torch.nn.Module, spec: str) -> list[str]:
    """Load ``model.init_from`` into ``method.clip``; the log lines to print (source, adaptations, fresh heads)."""
    state, source = read_weights(spec)
    notes = load_into_towers(method.clip, state, source)
    fresh = [name for name, module in method.named_children()
             if name != "clip" and any(True for _ in module.parameters())]
    lines = [f"model.init_from: towers loaded from {source}"] + [f"model.init_from: {n}" for n in notes]
    if fresh:
        lines.append(f"model.init_from: not in the checkpoint, initialised fresh: {', '.join(fresh)}")
    return lines
