"""The learning benchmark's recipe and its variants (benchmarks/learning.py trains them).

One recipe for every model; a variant names the method and the few overrides it changes (its augmentation,
ViT init, head sizes, loss), so a table row reads as "this one factor against that row". A variant's name is
its record in benchmarks/results/learning*.json: never rename or redefine one that a results file holds; add a
new name instead.
"""
from __future__ import annotations

from pathlib import Path

STEPS, BATCH, LR, WD = 300, 64, 5e-4, 0.1  # the recipe; --steps changes the schedule for every model
CTX = 32
TOWERS = ["model.preset=tiny-vit", "model.vision.image_size=32", "model.vision.layers=4", "model.vision.width=128",
          "model.vision.patch_size=8", "model.text.layers=4", "model.text.width=128", "model.text.heads=2",
          f"model.text.context_length={CTX}", "model.embed_dim=128"]
RECIPE = [f"optim.lr={LR}", f"optim.weight_decay={WD}", f"train.batch_size={BATCH}"]
SMALL_DATA = Path(__file__).resolve().parents[1] / "configs" / "declip_small_data.yaml"
VIEW2_09, VIEW2_05 = "data.second_view_crop_scale=[0.9,1.0]", "data.second_view_crop_scale=[0.5,1.0]"
VIEW2_07 = "data.second_view_crop_scale=[0.7,1.0]"

# name -> (method, extra overrides, use the small-data config file)
VARIANTS: dict[str, tuple[str, list[str], bool]] = {
    "openclip": ("openclip", [], False),
    "clip": ("clip", [], False),  # the reference's CLIP baseline augmentation: RandomResizedCrop(0.5-1)
    "clip-crop09": ("clip", ["data.crop_scale=[0.9,1.0]"], False),  # open_clip's crop range (0.9-1)
    # and open_clip's ViT init (model.vision.init): our CLIP with the two open_clip defaults that differ from
    # the reference recipe
    "clip-crop09-ocinit": ("clip", ["data.crop_scale=[0.9,1.0]", "model.vision.init=open_clip"], False),
    # and open_clip's crop resize too (bicubic instead of the reference's bilinear; round 8)
    "clip-crop09-ocinit-bicubic": ("clip", ["data.crop_scale=[0.9,1.0]", "model.vision.init=open_clip",
                                            "data.crop_interpolation=bicubic"], False),
    # and open_clip's logit-scale floor (log 0 instead of the reference's 3; round 10)
    "clip-crop09-ocinit-floor0": ("clip", ["data.crop_scale=[0.9,1.0]", "model.vision.init=open_clip",
                                           "model.logit_scale_min=0"], False),
    # and open_clip's warm-up start (lr from 0 instead of the reference's 1e-4; round 10)
    "clip-crop09-ocinit-wu0": ("clip", ["data.crop_scale=[0.9,1.0]", "model.vision.init=open_clip",
                                        "optim.warmup_start_lr=0"], False),
    # and open_clip's patch dropout at FLIP's 0.5 (issue 39: half the patch tokens in training, all in evaluation)
    "clip-crop09-ocinit-pd05": ("clip", ["data.crop_scale=[0.9,1.0]", "model.vision.init=open_clip",
                                         "model.vision.patch_dropout=0.5"], False),
    "clip-ocinit": ("clip", ["model.vision.init=open_clip"], False),  # the same init at the reference crop 0.5-1
    # and at the small-data DeCLIP's second-view crop 0.7-1
    "clip-crop07-ocinit": ("clip", ["data.crop_scale=[0.7,1.0]", "model.vision.init=open_clip"], False),
    "declip": ("declip", ["method.queue_size=4096", "method.simsiam_proj_dim=256", "method.simsiam_pred_dim=64"],
               False),
    # FILIP / DeFILIP (issue 29) at the same head/queue sizes as "declip"; FILIP with the global term on (the
    # reference config trains the dense term alone: "filip-dense-only"). Its weights were the field defaults
    # 0.4 / 0.2 when it was run; written out since method.name=filip brings FILIP's own 0 / 1 (issue 38)
    "filip": ("filip", ["method.clip_weight=0.4", "method.filip_weight=0.2"], False),
    "filip-dense-only": ("filip", ["method.clip_weight=0", "method.filip_weight=1"], False),
    "defilip": ("defilip", ["method.queue_size=4096", "method.simsiam_proj_dim=256", "method.simsiam_pred_dim=64"],
                False),
    "declip-ref": ("declip", [], False),  # reference head/queue sizes (65,536; 1,024/512)
    # issue 29: SLIP (its SimCLR head's hidden layer scaled down like DeCLIP's heads above; reference 4096) and the
    # sigmoid (SigLIP) loss in place of the softmax one, at the clip / declip variants' recipe
    "slip": ("slip", ["method.simclr_hidden_dim=512"], False),
    # SLIP with its CLIP view at clip-crop09-ocinit's crop and init (its SimCLR views keep MoCo v2's 0.2-1): SLIP's
    # added term against the best CLIP recipe here, crop for crop
    "slip-crop09-ocinit": ("slip", ["method.simclr_hidden_dim=512", "data.crop_scale=[0.9,1.0]",
                                    "model.vision.init=open_clip"], False),
    "clip-sigmoid": ("clip", ["method.contrastive_loss=sigmoid"], False),
    "declip-sigmoid": ("declip", ["method.queue_size=4096", "method.simsiam_proj_dim=256",
                                  "method.simsiam_pred_dim=64", "method.contrastive_loss=sigmoid"], False),
    "declip-no-simsiam": ("declip", ["method.queue_size=4096", "method.simsiam_weight=0"], False),
    "declip-no-mlm": ("declip", ["method.queue_size=4096", "method.simsiam_proj_dim=256",
                                 "method.simsiam_pred_dim=64", "method.mlm_weight=0"], False),
    "declip-no-nn": ("declip", ["method.simsiam_proj_dim=256", "method.simsiam_pred_dim=64",
                                "method.nn_weight=0"], False),
    "declip-no-mv": ("declip", ["method.queue_size=4096", "method.simsiam_proj_dim=256",
                                "method.simsiam_pred_dim=64", "method.multi_view=false"], False),
    "declip-small": ("declip", [], True),  # configs/declip_small_data.yaml as shipped (v3 since round 9)
    # its ablations: one supervision removed (its weight 0 / one contrastive view)
    "declip-small-no-nn": ("declip", ["method.nn_weight=0"], True),
    "declip-small-no-mv": ("declip", ["method.multi_view=false"], True),
    # the candidate not chosen: the second image view at the reference's 0.5-1 (val only)
    "declip-small-view2crop05": ("declip", ["data.second_view_crop_scale=[0.5,1.0]"], True),
    # the config comment's advice for a few hundred pairs: both views at 0.5-1
    "declip-small-fewpairs": ("declip", ["data.crop_scale=[0.5,1.0]", "data.second_view_crop_scale=[0.5,1.0]"],
                              True),
    # every version, each pinned to what it was run with (both views at one crop range but in v4): v0 (crops
    # 0.5-1), v1 (crops 0.9-1), v2 (+ NN excludes self), all three with the reference ViT init; v3 (v2 +
    # open_clip's ViT init; shipped in round 4 and again since round 9)
    "declip-small-crop05": ("declip", ["model.vision.init=reference", "data.crop_scale=[0.5,1.0]", VIEW2_05,
                                       "method.nn_exclude_self=false"], True),
    "declip-small-v1": ("declip", ["model.vision.init=reference", VIEW2_09, "method.nn_exclude_self=false"], True),
    "declip-small-v2": ("declip", ["model.vision.init=reference", VIEW2_09], True),
    "declip-small-v3": ("declip", [VIEW2_09], True),
    "declip-small-v3-no-nn": ("declip", [VIEW2_09, "method.nn_weight=0"], True),
    "declip-small-v3-no-mv": ("declip", [VIEW2_09, "method.multi_view=false"], True),
    # v3 with SimSiam alone or MLM alone added (round 11; v2-full added both at once)
    "declip-small-v3-simsiam": ("declip", [VIEW2_09, "method.clip_weight=0.6", "method.simsiam_weight=0.2",
                                           "method.simsiam_proj_dim=256", "method.simsiam_pred_dim=64"], True),
    "declip-small-v3-mlm": ("declip", [VIEW2_09, "method.clip_weight=0.6", "method.mlm_weight=0.2"], True),
    # the same with the contrastive terms on the unmasked caption, MLM on a second copy (round 12)
    "declip-small-v3-mlm-plain": ("declip", [VIEW2_09, "method.clip_weight=0.6", "method.mlm_weight=0.2",
                                             "method.contrast_text=plain"], True),
    # v3 warmed up from 0 (round 10), to be read against clip-crop09-ocinit-wu0
    "declip-small-v3-wu0": ("declip", [VIEW2_09, "optim.warmup_start_lr=0"], True),
    # v3 with both crops resized bicubic (round 10), to be read against clip-crop09-ocinit-bicubic
    "declip-small-v3-bicubic": ("declip", [VIEW2_09, "data.crop_interpolation=bicubic"], True),
    # v4 (rounds 5-8): v3 with its second view cropped at 0.7-1, and its ablations
    "declip-small-v4": ("declip", [VIEW2_07], True),
    "declip-small-v4-no-nn": ("declip", [VIEW2_07, "method.nn_weight=0"], True),
    "declip-small-v4-no-mv": ("declip", [VIEW2_07, "method.multi_view=false"], True),
    # v2's ablations: one supervision removed, or all four; and v2 at the reference's crop range (DeCLIP's own
    # gain over the `clip` row, crop for crop)
    "declip-small-v2-full": ("declip", ["model.vision.init=reference", VIEW2_09, "method.clip_weight=0.4",
                                        "method.simsiam_weight=0.2", "method.mlm_weight=0.2",
                                        "method.simsiam_proj_dim=256", "method.simsiam_pred_dim=64"], True),
    "declip-small-v2-no-nn": ("declip", ["model.vision.init=reference", VIEW2_09, "method.nn_weight=0"], True),
    "declip-small-v2-no-mv": ("declip", ["model.vision.init=reference", VIEW2_09, "method.multi_view=false"], True),
    "declip-small-v2-refcrop": ("declip", ["model.vision.init=reference", "data.crop_scale=[0.5,1.0]", VIEW2_05],
                                True),
}
