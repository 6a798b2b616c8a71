"""The model section of the run configuration: the two towers, the embedding and the logit-scale bounds.

A preset (declip.presets) fills every field the user leaves unset; the checks here name the dotted key.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from .config_parse import Check
from .presets import PRESETS

PresetName = Literal["tiny-vit", "tiny-rn", "vit-b-32", "rn50"]  # declip.presets.PRESETS: their values
assert set(PRESETS) == set(typing.get_args(PresetName)), "PresetName and PRESETS must list the same presets"


@dataclass
class VisionConfig:
    kind: Literal["vit", "resnet"] = "vit"
    image_size: int = 64
    width: int = 128  # ViT width, or ResNet stem width (64 for RN50)
    layers: int | list[int] = 2  # ViT depth, or ResNet stage depths (RN50: [3, 4, 6, 3])
    head_width: int = 64
    patch_size: int = 8
    freeze_conv1: bool = True  # DeCLIP freezes the ViT patch embedding
    # ViT initialisation. reference: DeCLIP's, CLIP's normal init on the transformer blocks as on the text tower
    # and positional embedding std 0.01. open_clip: open_clip's VisionTransformer (PyTorch's default init on the
    # blocks, positional embedding std width^-0.5), which learns more from a few hundred pairs
    # (benchmarks/results/learning.md). A ResNet tower has one init (CLIP's), whichever is set.
    init: Literal["reference", "open_clip"] = "reference"
    # Share of the patch tokens a ViT drops in training (open_clip's PatchDropout, FLIP: 0.5 is the paper's;
    # evaluation sees every patch). 0 = off. A training setting: --allow-config-change may change it on resume.
    patch_dropout: float = 0.0

    def validate(self, check: Check) -> None:
        check(self.image_size >= 16, "model.vision.image_size", "must be >= 16")
        check(0.0 <= self.patch_dropout < 1.0, "model.vision.patch_dropout",
              "must be in [0, 1): the share of patch tokens dropped in training (0 = off, 0.5 = FLIP's)")
        if self.kind == "vit":
            check(isinstance(self.layers, int) and self.layers > 0, "model.vision.layers",
                  "a ViT needs one positive depth")
            check(self.image_size % self.patch_size == 0, "model.vision.patch_size",
                  f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
            check(self.width % self.head_width == 0, "model.vision.head_width", "must divide model.vision.width")
        else:
            check(isinstance(self.layers, list) and len(self.layers) == 4 and min(self.layers) > 0,
                  "model.vision.layers", "a ResNet needs four positive stage depths, e.g. [3, 4, 6, 3]")
            check(self.image_size % 32 == 0, "model.vision.image_size", "a ResNet needs a multiple of 32")
            check(self.init == "reference", "model.vision.init",
                  "only a ViT has a choice of init (a ResNet tower always gets CLIP's); remove the setting")
            check(self.patch_dropout == 0, "model.vision.patch_dropout",
                  "only a ViT tower drops patches (a ResNet has no patch tokens); set 0 or use a ViT preset")


@dataclass
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49409  # CLIP BPE (49408) + the MLM mask token
    width: int = 128
    heads: int = 2
    layers: int = 2

    def validate(self, check: Check) -> None:
        check(self.width % self.heads == 0, "model.text.heads", f"must divide model.text.width ({self.width})")
        check(self.context_length >= 8, "model.text.context_length", "must be >= 8")
        check(self.vocab_size >= 49409, "model.text.vocab_size",
              "must hold the CLIP BPE vocabulary + mask token (49409)")


LOGIT_SCALE_MAX = 6.0  # ceiling of log(logit scale): the reference's (models/towers.py clamps into it)


@dataclass
class ModelConfig:
    preset: PresetName = "tiny-vit"  # fills the fields below unless they are set explicitly; see PRESETS
    embed_dim: int = 128
    quick_gelu: bool = True
    # floor of log(logit scale), applied after every optimizer step to the global scale and FILIP's dense one:
    # the reference's 3 (scale >= 20.1, so the init 1/0.07 = 14.3 lasts one step); open_clip's is 0. The ceiling
    # stays the reference's 6 (the global value is capped at 100 anyway)
    logit_scale_min: float = 3.0
    # start the towers from trained weights (a fresh run only; a resumed run takes its checkpoint's): a declip
    # checkpoint, an open_clip weights file, an open_clip 'local-dir:' folder or a declip export, hf-hub:ORG/NAME
    # (huggingface_hub's cache) or openclip:MODEL/TAG. Where the source states its architecture (a folder's
    # open_clip_config.json, a declip checkpoint's config, open_clip's model config) it fills model.* (fill_from_init)
    init_from: str = ""
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    # fine-tuning (models/locks.py): freeze a tower (no gradient, no optimizer state, no DDP bucket) but its last
    # N groups, counted as open_clip counts them (image: ViT layers + 2, ResNet 6; text: layers + 2; the last
    # group is the projection); freeze_bn_stats: a ResNet's locked BatchNorm layers keep their running statistics
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    lock_image_freeze_bn_stats: bool = False
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0

    def lock_groups(self) -> tuple[int, int]:
        """How many lock groups each tower has (models/locks.py image_groups / text_groups build them)."""
        image = self.vision.layers + 2 if self.vision.kind == "vit" else 6
        return image, self.text.layers + 2

    def validate(self, check: Check) -> None:
        check(self.embed_dim > 0, "model.embed_dim", "must be > 0")
        if self.init_from.startswith("openclip:"):
            check(self.init_from.count("/") == 1 and all(self.init_from[9:].split("/")), "model.init_from",
                  "openclip:MODEL/TAG, e.g. openclip:ViT-B-32/laion2b_s34b_b79k (open_clip.list_pretrained())")
        elif self.init_from.startswith("hf-hub:"):
            repo = self.init_from[7:].partition("@")[0]
            check(repo.count("/") == 1 and all(repo.split("/")), "model.init_from",
                  "hf-hub:ORG/NAME (optionally @REVISION), read through huggingface_hub's cache")
        elif self.init_from:
            path = Path(self.init_from.removeprefix("local-dir:"))
            check(path.exists(), "model.init_from", f"{path} does not exist (an open_clip checkpoint file, a "
                  "local-dir: folder or a declip export; openclip:MODEL/TAG for a published one)")
        check(0.0 <= self.logit_scale_min < LOGIT_SCALE_MAX, "model.logit_scale_min",
              f"must be in [0, {LOGIT_SCALE_MAX}) (log space; the reference's 3, open_clip's 0)")
        self.vision.validate(check)
        self.text.validate(check)
        self.validate_locks(check)  # after the towers' checks: the group counts need valid depths

    def validate_locks(self, check: Check) -> None:
        image, text = self.lock_groups()
        for key, n, total, lock in (("model.lock_image_unlocked_groups", self.lock_image_unlocked_groups, image,
                                     "lock_image"),
                                    ("model.lock_text_unlocked_layers", self.lock_text_unlocked_layers, text,
                                     "lock_text")):
            check(n >= 0, key, "must be >= 0")
            check(n == 0 or getattr(self, lock), key, f"only means something with model.{lock}=true; set it")
            check(n < total or not getattr(self, lock), key, f"{n} unlocks the whole tower ({total} groups); "
                  f"use at most {total - 1}, or model.{lock}=false to train it all")
        check(not self.lock_image_freeze_bn_stats or (self.lock_image and self.vision.kind == "resnet"),
              "model.lock_image_freeze_bn_stats", "needs model.lock_image=true and a ResNet image tower (a ViT has "
              "no BatchNorm)")


def fill_from_init(tree: dict, sources: dict[str, str], user_set: Callable[[str, dict], bool]) -> None:
    """``model.*`` architecture values from ``model.init_from``'s own description of itself, before the preset
    fills the rest: no hand-set keys to get wrong. A value the user set that disagrees is one line naming both;
    a shipped recipe's value yields (recorded, like every filled value, as ``model.init_from (FILE)``)."""
    model = tree.get("model")
    spec = model.get("init_from") if isinstance(model, dict) else None
    if not isinstance(spec, str) or not spec:
        return
    from .errors import CheckpointError, ConfigError
    from .model_ref import architecture, resolve

    where = sources.get("model.init_from", "config")

    def error(e: CheckpointError) -> ConfigError:  # "{source}: model.init_from: why", as every config error
        return ConfigError(f"{where}: model.init_from: {str(e).removeprefix(f'model.init_from={spec}: ')}")

    try:
        ref = resolve(spec, fetch=False)
    except CheckpointError as e:
        raise error(e) from None
    try:
        arch = architecture(ref)
    except CheckpointError as e:
        if ref.kind == "file":  # unreadable: a fresh run's load says so in one line; a resumed run never reads it
            return
        raise error(e) from None
    for key, value in arch.items():
        dotted, (section, _, name) = f"model.{key}", key.rpartition(".")
        node = model.setdefault(section, {}) if section else model
        if not isinstance(node, dict):
            continue  # the user's mistake, reported by the builder
        if name in node and user_set(dotted, sources):
            given = list(node[name]) if isinstance(node[name], tuple) else node[name]
            if given != value:
                raise ConfigError(f"{sources[dotted]}: {dotted}={given!r} but model.init_from={spec} has "
                                  f"{value!r} ({ref.where}): remove {dotted} (the architecture comes from the "
                                  "source) or start from a source of that shape")
            continue
        node[name] = value
        sources[dotted] = f"model.init_from ({ref.where})"
