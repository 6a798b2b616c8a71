"""Model presets: named tower sizes that fill every model field the user did not set.

Explicit values always win; a preset only fills gaps. Switching ``model.vision.kind`` away from the preset's
(``model.vision.kind=vit`` on top of a ResNet preset) switches to the preset's sibling of that kind (tiny-rn <->
tiny-vit, rn50 <-> vit-b-32), so the vision fields that come with it (depth, width, patch) match the kind
instead of being a ResNet's depth list under a ViT. Every filled value is recorded in ``sources`` as
``preset NAME`` and printed at the start of a run.
"""
from __future__ import annotations

import copy

PRESETS: dict[str, dict] = {
    "tiny-vit": {
        "embed_dim": 128,
        "vision": {"kind": "vit", "image_size": 64, "width": 128, "layers": 2, "head_width": 64, "patch_size": 8},
        "text": {"width": 128, "heads": 2, "layers": 2},
    },
    "vit-b-32": {
        "embed_dim": 512,
        "vision": {"kind": "vit", "image_size": 224, "width": 768, "layers": 12, "head_width": 64, "patch_size": 32},
        "text": {"width": 512, "heads": 8, "layers": 12},
    },
    "rn50": {
        "embed_dim": 1024,
        "vision": {"kind": "resnet", "image_size": 224, "width": 64, "layers": [3, 4, 6, 3], "head_width": 64},
        "text": {"width": 512, "heads": 8, "layers": 12},
    },
    "tiny-rn": {
        "embed_dim": 128,
        "vision": {"kind": "resnet", "image_size": 64, "width": 16, "layers": [1, 1, 1, 1], "head_width": 32},
        "text": {"width": 128, "heads": 2, "layers": 2},
    },
}

SIBLING = {"tiny-vit": "tiny-rn", "tiny-rn": "tiny-vit", "vit-b-32": "rn50", "rn50": "vit-b-32"}


def _fill(preset: dict, user: dict, sources: dict[str, str], name: str, prefix: str = "model.") -> dict:
    out = copy.deepcopy(user)
    for k, v in preset.items():
        if isinstance(v, dict):
            if isinstance(user.get(k, {}), dict):  # anything else is the user's mistake, reported by the builder
                out[k] = _fill(v, user.get(k, {}), sources, name, f"{prefix}{k}.")
        elif k not in user:
            out[k] = v
            sources[f"{prefix}{k}"] = f"preset {name}"
    return out


def apply_preset(name: str, model: dict, sources: dict[str, str]) -> dict:
    """The user's ``model`` section with the preset's values filled in where the user gave none."""
    kind = model.get("vision", {}).get("kind") if isinstance(model.get("vision"), dict) else None
    if kind is not None and kind != PRESETS[name]["vision"]["kind"] and SIBLING[name] in PRESETS:
        name = SIBLING[name]
        sources["model.preset"] = f"{sources.get('model.vision.kind', 'config')}: the {kind} sibling"
    filled = _fill(PRESETS[name], model, sources, name)
    filled["preset"] = name
    return filled
