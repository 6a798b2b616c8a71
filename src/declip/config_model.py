"""The model section of the run configuration: the two towers, the embedding and the logit-scale bounds.

A preset (declip.presets) fills every field the user leaves unset; the checks here name the dotted key.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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

    def validate(self, check: Check) -> None:
        check(self.image_size >= 16, "model.vision.image_size", "must be >= 16")
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
    # floor of log(logit scale), applied after every optimizer step: the reference's 3 (scale >= 20.1, so the
    # init 1/0.07 = 14.3 lasts one step); open_clip's is 0. The ceiling stays the reference's 6 (the value is
    # capped at 100 anyway)
    logit_scale_min: float = 3.0
    # start the towers from trained weights (a fresh run only; a resumed run takes its checkpoint's): an open_clip
    # checkpoint file, an open_clip 'local-dir:' folder or a declip export, or openclip:MODEL/TAG (downloads)
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
