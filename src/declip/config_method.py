"""The method section of the run configuration: which member of the family trains, and its loss weights,
heads and views. The field defaults are DeCLIP's reference values; naming another method brings that method's
reference loss weights and head sizes instead (METHOD_DEFAULTS, applied by declip.config for every key the user's
command line or config file leaves unset).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .config_parse import Check

EdaOp = Literal["synonym", "swap", "delete", "insert"]  # the one list of EDA operation names
DEFAULT_EDA_OPS: tuple[str, ...] = ("synonym", "swap", "delete")  # the reference's (no random insertion)


@dataclass
class MethodConfig:
    name: Literal["clip", "declip", "slip", "filip", "defilip"] = "declip"
    # every image-text term's loss: softmax (symmetric InfoNCE, the reference's) | sigmoid (SigLIP, open_clip's:
    # its own learnable scale and bias, init log 10 and -10; losses/sigmoid.py)
    contrastive_loss: Literal["softmax", "sigmoid"] = "softmax"
    # DeCLIP loss weights (reference: 0.4 / 0.2 / 0.2 / 0.2). 0 skips that branch's computation. Unset, each is
    # the named method's reference value (METHOD_DEFAULTS: SLIP's clip_weight 1, FILIP's 0)
    clip_weight: float = 0.4
    simsiam_weight: float = 0.2
    mlm_weight: float = 0.2
    nn_weight: float = 0.2
    mask_prob: float = 0.15
    queue_size: int = 65536
    nn_warmup_steps: int = 0
    nn_exclude_self: bool = False  # small data: a caption's nearest neighbour is never its own older copy (see
    # losses/nn_queue.py; at YFCC15M scale the queue never holds the sample itself, so the reference needs none)
    simsiam_proj_dim: int = 1024
    simsiam_pred_dim: int = 512
    eda_ops: list[EdaOp] = field(default_factory=lambda: list(DEFAULT_EDA_OPS))
    local_loss: bool = False  # each rank: local rows vs. gathered columns (always); True skips the gather
    # DeCLIP small-data knobs (issue 12); the defaults are the reference method.
    multi_view: bool = True  # False: the contrastive term uses view 1 x the original caption only (ablation)
    # image views: mocov2 (reference) | clip (RandomResizedCrop 0.5-1 only)
    augment: Literal["mocov2", "clip"] = "mocov2"
    # the caption the contrastive terms see when MLM is on: masked (reference: one text forward serves both) |
    # plain (the unmasked caption; MLM reads a second copy of the masked one, in the same forward). Meant for
    # 3-6 token captions, where a 15% mask can hide the one word that names the image; on the learning
    # benchmark's val split it scored below masked (round 12): there the mask acts as a text augmentation.
    contrast_text: Literal["masked", "plain"] = "masked"
    # SLIP (reference: experiments/slip_experiments/yfcc15m/*/config.yaml, loss_weight.simclr_loss 1, sim_dim 256)
    simclr_weight: float = 1.0  # 0: no SimCLR head, no SSL views (then SLIP is CLIP on its base view)
    simclr_temperature: float = 0.1
    simclr_hidden_dim: int = 4096
    simclr_out_dim: int = 256
    # FILIP / DeFILIP dense (token-wise) term, methods/filip.py; 0 builds no dense head. Reference: DeFILIP 0.2;
    # FILIP's configs train the dense term alone (clip_weight 0, filip_weight 1: its METHOD_DEFAULTS).
    filip_weight: float = 0.2
    filip_dim: int = 256  # the dense heads' output width
    filip_topk: int = 16  # tokens kept per side and pair before the gather
    filip_chunk: int = 256  # gathered columns per similarity block (0 = all at once); memory only, same result

    def validate(self, check: Check) -> None:
        for w in ("clip_weight", "simsiam_weight", "mlm_weight", "nn_weight", "simclr_weight", "filip_weight"):
            check(getattr(self, w) >= 0, f"method.{w}", "must be >= 0")
        check(0.0 < self.mask_prob < 1.0, "method.mask_prob", "must be in (0, 1)")
        check(self.queue_size > 0, "method.queue_size", "must be > 0")
        check(self.nn_warmup_steps >= 0, "method.nn_warmup_steps", "must be >= 0")
        check(len(self.eda_ops) > 0, "method.eda_ops", "needs at least one of synonym, swap, delete, insert")
        check(self.simclr_temperature > 0, "method.simclr_temperature", "must be > 0 (SLIP's: 0.1)")
        check(self.simclr_hidden_dim > 0 and self.simclr_out_dim > 0, "method.simclr_out_dim",
              "the SimCLR head's sizes must be > 0 (SLIP's: hidden 4096, out 256)")
        for key in ("filip_dim", "filip_topk"):
            check(getattr(self, key) >= 1, f"method.{key}", "must be >= 1")
        check(self.filip_chunk >= 0, "method.filip_chunk", "must be >= 0 (0 = unchunked)")
        if self.name == "slip":
            check(self.clip_weight + self.simclr_weight > 0, "method.simclr_weight",
                  "method.clip_weight and method.simclr_weight are both 0: SLIP would train nothing")
        elif self.name == "filip":  # named after filip_weight: FILIP's reference trains that term alone
            check(self.clip_weight + self.filip_weight > 0, "method.filip_weight",
                  "method.clip_weight and method.filip_weight are both 0: FILIP would train nothing")
        elif self.name != "clip":
            dense = self.filip_weight if self.name == "defilip" else 0.0
            others = (self.clip_weight, self.simsiam_weight, self.mlm_weight, self.nn_weight)
            check(sum(others) + dense > 0, "method.clip_weight", f"all {self.name} loss weights are 0")


# Each method's reference loss weights and head sizes, by method.name: config_from_dict fills each key the user's
# command line or config file leaves unset (a key set anywhere, a recipe file included, wins), and records
# "default for method.name=NAME" as its origin. Without this the own-data defaults' DeCLIP weights would stay
# under another method (SLIP trained at clip_weight 0.4 where its reference is 1 + 1). The values are those of
# the shipped reference recipes (configs/{clip,declip,slip,filip,defilip}_vitb32_yfcc15m.yaml, each key traced
# to Sense-GVT/DeCLIP's experiment configs there); tests/test_method_defaults.py holds them to those files.
_DECLIP_REFERENCE = {"clip_weight": 0.4, "simsiam_weight": 0.2, "mlm_weight": 0.2, "nn_weight": 0.2,
                     "queue_size": 65536, "simsiam_proj_dim": 1024, "simsiam_pred_dim": 512}
_DENSE_REFERENCE = {"filip_dim": 256, "filip_topk": 16}
METHOD_DEFAULTS: dict[str, dict[str, float | int]] = {
    "clip": {"clip_weight": 1.0},  # CLIP's one term (read by no other key: its loss is unweighted)
    "declip": _DECLIP_REFERENCE,
    "slip": {"clip_weight": 1.0, "simclr_weight": 1.0, "simclr_hidden_dim": 4096, "simclr_out_dim": 256,
             "simclr_temperature": 0.1},
    "filip": {"clip_weight": 0.0, "filip_weight": 1.0, **_DENSE_REFERENCE},  # the dense term alone
    "defilip": {**_DECLIP_REFERENCE, "filip_weight": 0.2, **_DENSE_REFERENCE},
}
