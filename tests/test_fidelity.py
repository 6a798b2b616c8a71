"""Fidelity to the reference recipe (issue 12, fixes 3 and 5) and the small-data DeCLIP knobs.

Fixes 1, 2 and 4 are tested beside their code: tests/test_eda.py (EDA on the raw caption),
tests/test_models.py (CLIP init on the ViT blocks; logit-scale cap on the value only).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from declip.config import load_config
from declip.methods import build_method
from declip.train.accel import prepare_method

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_CONFIGS = sorted((ROOT / "configs").glob("*_yfcc15m.yaml"))
TINY_RN = ["model.preset=tiny-rn", "model.vision.image_size=32", "model.text.context_length=16",
           "method.queue_size=64", "method.simsiam_proj_dim=32", "method.simsiam_pred_dim=16"]


# --- fix 3: sync the ResNet tower's BatchNorm, never the SimSiam heads' ------------------------------------
def test_sync_bn_syncs_only_the_image_tower():
    cfg = load_config(None, ["method.name=declip", *TINY_RN, "train.sync_bn=true"])
    method = build_method(cfg)
    prepare_method(method, cfg, "cpu", world_size=1)
    synced = {n for n, m in method.named_modules() if isinstance(m, nn.SyncBatchNorm)}
    plain = {n for n, m in method.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)} - synced
    assert synced and all(n.startswith("clip.visual.") for n in synced)
    assert plain and all(n.startswith(("projector.", "predictor.")) for n in plain)


@pytest.mark.parametrize("name", ["clip_rn50_yfcc15m.yaml", "declip_rn50_yfcc15m.yaml", "slip_rn50_yfcc15m.yaml",
                                  "filip_rn50_yfcc15m.yaml"])
def test_rn50_reference_configs_sync_the_tower_bn(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.train.sync_bn is True


@pytest.mark.parametrize("name", ["clip_vitb32_yfcc15m.yaml", "declip_vitb32_yfcc15m.yaml",
                                  "slip_vitb32_yfcc15m.yaml", "filip_vitb32_yfcc15m.yaml",
                                  "defilip_vitb32_yfcc15m.yaml"])
def test_vit_reference_configs_have_no_batchnorm_to_sync(name):
    assert load_config(ROOT / "configs" / name).train.sync_bn is False


# --- fix 5: the launch the reference configs point to gives their global batch -----------------------------
@pytest.mark.parametrize("path", REFERENCE_CONFIGS, ids=lambda p: p.name)
def test_reference_config_launch_comment_matches_global_batch(path):
    text = path.read_text()
    cfg = load_config(path)
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "global batch 4096" in header.replace(",", "")
    launch = [line for line in text.splitlines() if line.startswith("#") and "Launch" in line]
    assert launch, "the config names its launch"
    nodes = re.search(r"(\d+) nodes x (\d+) GPUs", launch[0])
    assert nodes, launch[0]
    assert int(nodes.group(1)) * int(nodes.group(2)) * cfg.train.batch_size == 4096
    assert "train_multinode.sh" in header or "slurm_declip.sbatch" in header
    assert not re.search(r"Launch:\s*scripts/train_full_8p\.sh", header)  # 8 x 128 = 1,024: not the recipe


def test_reference_configs_keep_the_reference_method():
    for path in REFERENCE_CONFIGS:
        cfg = load_config(path)
        assert cfg.method.augment == "mocov2" and cfg.method.multi_view is True
        peak = 5e-4 if cfg.method.name in ("slip", "filip") else 1e-3  # their configs: warmup_lr 0.0005
        assert (cfg.optim.lr, cfg.optim.warmup_start_lr, cfg.optim.warmup_steps) == (peak, 1e-4, 2500)
        assert tuple(cfg.optim.betas) == (0.9, 0.98) and cfg.optim.eps == 1e-8
        if cfg.method.name == "declip":
            m = cfg.method
            assert (m.clip_weight, m.simsiam_weight, m.mlm_weight, m.nn_weight) == (0.4, 0.2, 0.2, 0.2)
            assert (m.queue_size, m.simsiam_proj_dim, m.simsiam_pred_dim) == (65536, 1024, 512)
            assert m.nn_exclude_self is False  # the reference's queue never holds the pair itself at 15M pairs


# --- the small-data DeCLIP recipe and its knobs -------------------------------------------------------------
def test_small_data_config_loads_and_differs_from_the_reference_only_where_documented():
    path = ROOT / "configs" / "declip_small_data.yaml"
    cfg = load_config(path, ["data.path=x.jsonl", "data.root=."])
    m = cfg.method
    assert m.name == "declip" and m.augment == "clip" and m.multi_view
    assert m.simsiam_weight == 0 and m.mlm_weight == 0 and m.clip_weight > 0 and m.nn_weight > 0
    assert m.nn_exclude_self  # chosen on the val split: ~1,000 pairs, the queue holds each caption ~4 times
    for key in ("augment", "simsiam_weight", "mlm_weight", "clip_weight", "nn_weight", "queue_size", "nn_exclude_self"):
        assert key in yaml.safe_load(path.read_text())["method"]
    assert cfg.data.crop_scale == [0.9, 1.0]  # open_clip's crop, chosen on the learning benchmark's val split
    # both views at that crop (v3): chosen on the same val split by DeCLIP's gain over our CLIP at the same crops
    assert cfg.data.second_view_crop_scale == [0.9, 1.0]
    assert cfg.model.vision.init == "open_clip"  # open_clip's ViT init, chosen on the same val split


def test_every_learning_benchmark_variant_is_a_valid_config_on_any_schedule_and_old_recipes_keep_their_views():
    """A variant's overrides are only parsed inside a worker, minutes into a benchmark; check them all here. The
    earlier recipe versions must keep the views they were run with when the shipped config moves on."""
    from helpers import load_benchmark

    learning = load_benchmark("learning")
    views, data = {}, ["data.source=manifest", "data.path=x.jsonl", "data.root=."]

    def with_data(name):
        config_file, overrides = learning.variant_config(name)
        return config_file, [*overrides, *data]

    for name, (method, _, _) in learning.VARIANTS.items():
        if method == "openclip":
            continue
        cfg = load_config(*with_data(name))  # what train_ours loads
        assert cfg.method.name == method
        assert (cfg.train.steps, cfg.optim.warmup_steps) == (300, 30)  # the schedule, 10% warm-up
        config_file, longer = learning.variant_config(name, steps=900)  # --steps: the same recipe, longer
        cfg_900 = load_config(config_file, [*longer, *data])
        assert (cfg_900.train.steps, cfg_900.optim.warmup_steps) == (900, 90)
        assert cfg_900.data == cfg.data and cfg_900.method == cfg.method and cfg_900.model == cfg.model
        views[name] = (cfg.data.crop_scale, cfg.data.second_view_crop_scale or cfg.data.crop_scale)
    for old in ("declip-small-v1", "declip-small-v2", "declip-small-v3", "declip-small-v3-no-mv"):
        assert views[old] == ([0.9, 1.0], [0.9, 1.0])  # one crop range for both views until v3
    assert views["declip-small-crop05"] == ([0.5, 1.0], [0.5, 1.0])
    for v4 in ("declip-small-v4", "declip-small-v4-no-nn", "declip-small-v4-no-mv"):
        assert views[v4] == ([0.9, 1.0], [0.7, 1.0])  # the harder second view of rounds 5-8
    # the shipped config is v3 again (round 9): one recipe under two names, the same config
    assert load_config(*with_data("declip-small")) == load_config(*with_data("declip-small-v3"))


@pytest.mark.parametrize("path", REFERENCE_CONFIGS, ids=lambda p: p.name)
def test_reference_configs_keep_the_reference_crop_ranges(path):
    from declip.data.views import REFERENCE_CROP_SCALE, SLIP_SSL_CROP_SCALE

    cfg = load_config(path)
    assert cfg.data.crop_scale == [] and cfg.data.second_view_crop_scale == []  # each method's own: CLIP 0.5-1,
    # DeCLIP's MoCo v2 views 0.2-1 (both views)
    assert cfg.model.vision.init == "reference"  # the small-data recipe's open_clip init stays out of them
    # SLIP: its CLIP view as CLIP's, its two SimCLR views as MoCo v2's
    assert REFERENCE_CROP_SCALE == {"clip": (0.5, 1.0), "mocov2": (0.2, 1.0), "slip": (0.5, 1.0)}
    assert SLIP_SSL_CROP_SCALE == (0.2, 1.0)


def _batch(cfg, b=4):
    from declip.data.text import TextPipeline
    from declip.methods import method_class
    import random

    spec = method_class(cfg.method.name).data_spec(cfg)
    texts = [TextPipeline(spec.text)(c, random.Random(i)) for i, c in enumerate(
        ["a red circle", "two blue squares", "a green triangle", "one yellow star"][:b])]
    size = cfg.model.vision.image_size
    batch = {k: torch.stack([t[k] for t in texts]) for k in texts[0]}
    batch["images"] = torch.randn(b, spec.n_views, 3, size, size)
    return spec, batch


def test_multi_view_off_scores_one_view_against_the_original_caption():
    cfg = load_config(None, ["method.name=declip", *TINY_RN, "method.multi_view=false", "method.nn_weight=0",
                             "method.mlm_weight=0", "method.simsiam_weight=0"])
    spec, batch = _batch(cfg)
    assert not spec.text.eda  # no EDA caption needed
    torch.manual_seed(0)
    method = build_method(cfg).eval()  # BatchNorm (tiny ResNet) on running statistics: batch-independent
    losses, _ = method(batch)
    from declip.losses.contrastive import Gathered
    from declip.losses.contrastive import logit_scale_value
    import torch.nn.functional as F

    i1 = F.normalize(method.clip.encode_image(batch["images"][:, 0]), dim=-1)
    t = F.normalize(method.clip.encode_text(batch["text"]), dim=-1)
    expected, _ = method.contrastive(Gathered(i1, gather=False), Gathered(t, gather=False),
                                     logit_scale_value(method.clip))
    torch.testing.assert_close(losses["clip"], cfg.method.clip_weight * expected, rtol=1e-4, atol=1e-5)


def test_augment_knob_picks_the_view_pipeline():
    from declip.methods import method_class

    for aug in ("mocov2", "clip"):
        cfg = load_config(None, ["method.name=declip", f"method.augment={aug}"])
        assert method_class("declip").data_spec(cfg).augment == aug
    assert load_config(None).method.augment == "mocov2"  # default: the reference views


@pytest.mark.parametrize("warmup", [0, 2])
def test_nn_supervision_waits_for_its_warmup_steps(warmup):
    cfg = load_config(None, ["method.name=declip", *TINY_RN, f"method.nn_warmup_steps={warmup}",
                             "method.mlm_weight=0", "method.simsiam_weight=0"])
    _, batch = _batch(cfg)
    method = build_method(cfg).eval()
    for step in range(3):
        losses, _ = method(batch)
        assert (float(losses["nn"].detach()) != 0.0) == (step >= warmup), step  # held at 0 on the device, no `if`
        method.after_step()


def test_nn_exclude_self_never_picks_the_pairs_own_caption():
    """Small-data knob: the queue remembers whose caption each entry is; a pair's neighbour is another pair's."""
    cfg = load_config(None, ["method.name=declip", *TINY_RN, "method.nn_exclude_self=true", "method.queue_size=8",
                             "method.mlm_weight=0", "method.simsiam_weight=0"])
    _, batch = _batch(cfg)
    batch["index"] = torch.tensor([10, 11, 12, 13])
    method = build_method(cfg).train()
    method(batch)  # fills the bank: the 4 EDA captions, then the 4 captions
    assert method.queue.ids.tolist() == [10, 11, 12, 13] * 2
    t = torch.nn.functional.normalize(method.clip.encode_text(batch["text"]), dim=-1).detach()
    own = method.queue.bank[4:]  # the captions' own (just enqueued) features
    assert torch.allclose(method.queue.nearest(t), own, atol=1e-5)  # without ids: always itself
    picked = method.queue.nearest(t, batch["index"])
    assert not any(torch.allclose(picked[i], own[i], atol=1e-5) for i in range(4))


@pytest.mark.parametrize("contrast_text", ["masked", "plain"])
def test_contrast_text_plain_keeps_the_mask_out_of_the_contrastive_terms(contrast_text):
    """Small-data knob: with contrast_text=plain the contrastive and NN terms see the unmasked caption, and the
    masked ids reach the MLM loss only; the reference (masked) contrasts the masked caption itself."""
    from declip.vocab import MASK_ID

    cfg = load_config(None, ["method.name=declip", *TINY_RN, "method.simsiam_weight=0", "method.nn_weight=0",
                             f"method.contrast_text={contrast_text}"])
    spec, batch = _batch(cfg)
    assert spec.text.mlm and spec.text.keep_plain == (contrast_text == "plain")
    assert ("text_plain" in batch) == (contrast_text == "plain")
    remasked = dict(batch, text=batch["text"].clone())
    remasked["text"][:, 1] = MASK_ID  # hide each caption's first word (its MLM labels stay: only the input moves)
    torch.manual_seed(0)
    method = build_method(cfg).eval()
    losses, _ = method(batch)
    losses2, _ = method(remasked)
    assert not torch.allclose(losses["mlm"], losses2["mlm"])  # the MLM head reads the masked ids either way
    assert torch.allclose(losses["clip"], losses2["clip"]) == (contrast_text == "plain")
    if contrast_text == "plain":  # the contrastive text feature is the unmasked caption's
        from declip.losses.contrastive import Gathered
        from declip.losses.contrastive import logit_scale_value
        import torch.nn.functional as F

        labelled = batch["mlm_labels"] != -100  # the unmasked ids hold the MLM targets where the mask is
        assert labelled.any() and torch.equal(batch["text_plain"][labelled], batch["mlm_labels"][labelled])
        encode = lambda f, x: Gathered(F.normalize(f(x), dim=-1), gather=False)
        views = [encode(method.clip.encode_image, batch["images"][:, v]) for v in (0, 1)]
        texts = [encode(method.clip.encode_text, batch[k]) for k in ("text_plain", "text_aug")]
        scale = logit_scale_value(method.clip)
        expected = sum(method.contrastive(i, t, scale)[0] for i in views for t in texts) / 4
        torch.testing.assert_close(losses["clip"], cfg.method.clip_weight * expected, rtol=1e-4, atol=1e-5)
