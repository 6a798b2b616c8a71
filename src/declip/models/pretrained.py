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

Sources (resolved by :mod:`declip.model_ref`, the resolver ``declip eval`` and ``declip.load`` share): a declip
training checkpoint (its checksums verified, as ``declip eval`` does), a file saved with ``torch.save`` (a state
dict, possibly under ``state_dict``, possibly with ``module.`` prefixes; loaded weights-only: a file holding
Python objects is refused in one line) or a ``.safetensors`` file; an open_clip ``local-dir:`` folder (as
``declip export`` writes it); ``hf-hub:ORG/NAME`` (huggingface_hub's cache); ``openclip:MODEL/TAG`` (open_clip's
published weights: its cache, else the network; without either it fails at once). The architecture comes from
the source where it says one (config.py fills ``model.*`` from it); shapes are checked before anything is copied:
the error names the first tensor that does not fit. Every loaded value changed on the way in is logged (a logit
scale moved into ``[model.logit_scale_min, 6]``, the mask token's row). A resumed run never reads it (the
trainer calls this on fresh runs only): the checkpoint wins.
"""
from __future__ import annotations

import math

import torch

from ..config import LOGIT_SCALE_MAX
from ..errors import CheckpointError
from ..model_ref import ModelRef, read_file, resolve
from .open_clip_files import tower_state_dict

TOKEN_EMBEDDING = "text.token_embedding.weight"
CLIP_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.")  # open_clip CLIP's


def read_weights(spec: str | ModelRef) -> tuple[dict[str, torch.Tensor], str]:
    """(a state dict in open_clip key names, the file it came from) for a model reference."""
    ref = spec if isinstance(spec, ModelRef) else resolve(spec)
    if ref.kind == "openclip":
        if ref.weights is None:
            ref = resolve(ref.spec)
        if ref.name.endswith("/openai"):  # a TorchScript archive: open_clip's own loader unpacks it
            import open_clip

            name, tag = ref.name.split("/")
            return open_clip.create_model(name, pretrained=tag).state_dict(), str(ref.weights)
    file = ref if ref.kind in ("file", "checkpoint") else ModelRef(ref.spec, "file", ref.weights, ref.weights)
    payload = read_file(file)
    if file.kind == "checkpoint":  # a declip training checkpoint, verified: its towers
        payload = tower_state_dict(payload["model"])
    elif isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if isinstance(payload, dict) and payload and all(k.startswith("module.") for k in payload):
        payload = {k[len("module."):]: v for k, v in payload.items()}
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(f"model.init_from: {file.path} holds no state dict of tensors")
    return payload, str(file.path)


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


@torch.no_grad()
def bound_logit_scale(clip: torch.nn.Module, floor: float) -> list[str]:
    """The loaded log logit scale moved into ``[floor, 6]`` (where training keeps it after every step) now, and
    said: an open_clip model trained to 4.6 is fine, one saved at 2.0 starts at 3 (scale 20.1)."""
    value = float(clip.logit_scale)
    bounded = min(max(value, floor), LOGIT_SCALE_MAX)
    if bounded == value:
        return []
    clip.logit_scale.fill_(bounded)
    bound = f"the floor model.logit_scale_min={floor:g}" if bounded == floor else f"the ceiling {LOGIT_SCALE_MAX:g}"
    return [f"logit_scale {value:.4g} (scale {math.exp(value):.1f}) {'raised' if bounded > value else 'lowered'} "
            f"to {bound} (scale {math.exp(bounded):.1f})"]


def init_towers(method: torch.nn.Module, spec: str | ModelRef) -> list[str]:
    """Load ``model.init_from`` into ``method.clip``; the log lines to print (source, every value changed on the
    way in, fresh heads)."""
    state, source = read_weights(spec)
    notes = load_into_towers(method.clip, state, source)
    cfg = getattr(method, "cfg", None)
    notes += bound_logit_scale(method.clip, cfg.model.logit_scale_min if cfg is not None else 0.0)
    fresh = [name for name, module in method.named_children()
             if name != "clip" and any(True for _ in module.parameters())]
    lines = [f"model.init_from: towers loaded from {source}"] + _architecture_lines(cfg)
    lines += [f"model.init_from: {n}" for n in notes]
    if fresh:
        lines.append(f"model.init_from: not in the checkpoint, initialised fresh: {', '.join(fresh)}")
    return lines


def _architecture_lines(cfg) -> list[str]:
    """The ``model.*`` values config.py took from the source (``fill_from_init``), as one log line."""
    origins = getattr(cfg, "origins", {}) if cfg is not None else {}
    taken = {k: src for k, src in origins.items() if src.startswith("model.init_from (")}
    if not taken:
        return []
    values = []
    for key in taken:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        values.append(f"{key}={value}")
    return [f"model.init_from: architecture from {next(iter(taken.values()))[17:-1]}: {' '.join(values)}"]
