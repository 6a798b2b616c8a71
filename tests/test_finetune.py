"""Fine-tuning a pretrained model (issue 40): tower locks, per-part learning rates.

A locked tower must come out of training bit for bit as it went in (parameters and, with frozen BatchNorm
statistics, buffers), hold no optimizer state, and leave the rest (the other tower, the method's heads) training.
"""
from __future__ import annotations

import pytest
import torch

from declip.config import ConfigError
from declip.methods import build_method
from declip.models.locks import image_groups, text_groups
from declip.train.trainer import Trainer
from helpers import TINY_RN, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["train.steps=3", "eval.builtin=false"]


def train_and_compare(cfg) -> tuple[dict, dict, Trainer]:
    """(state before, state after, the trainer) of a short run."""
    trainer = Trainer(cfg)
    try:
        before = {k: v.clone() for k, v in trainer.method.state_dict().items()}
        trainer.train()
    finally:
        trainer.close()
    return before, trainer.method.state_dict(), trainer


def moved(before: dict, after: dict, prefix: str) -> list[str]:
    return [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]


def assert_no_state(trainer: Trainer, module: torch.nn.Module) -> None:
    held = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in held or p in trainer.optimizer.state for p in module.parameters())


def test_lock_image_keeps_the_image_tower_while_text_and_heads_train(tiny_cfg):
    before, after, trainer = train_and_compare(tiny_cfg("method.name=declip", "model.lock_image=true", *FAST))
    assert moved(before, after, "clip.visual.") == []
    assert moved(before, after, "clip.text.")  # the other tower trains
    assert moved(before, after, "projector.") and moved(before, after, "predictor.")  # SimSiam on locked features
    assert_no_state(trainer, trainer.method.clip.visual)
    assert len(trainer.optimizer.state) == sum(p.requires_grad for p in trainer.method.parameters())


def test_lock_text_with_its_projection_unlocked(tiny_cfg):
    cfg = tiny_cfg("method.name=clip", "model.lock_text=true", "model.lock_text_unlocked_layers=1", *FAST)
    before, after, trainer = train_and_compare(cfg)
    assert moved(before, after, "clip.text.") == ["clip.text.text_projection.weight", "clip.text.text_projection.bias"]
    assert moved(before, after, "clip.visual.")
    frozen = [p for n, p in trainer.method.clip.text.named_parameters() if not n.startswith("text_projection")]
    assert_no_state(trainer, torch.nn.ParameterList(frozen))


def test_locked_resnet_keeps_its_batchnorm_statistics_across_train_calls(tiny_cfg):
    """Frozen statistics stay frozen through evaluation's eval()/train() switch; the unlocked attention pool
    (the last group) trains."""
    cfg = tiny_cfg("method.name=clip", *TINY_RN, "model.lock_image=true", "model.lock_image_unlocked_groups=1",
                   "model.lock_image_freeze_bn_stats=true", "train.steps=3", "eval.every=1", "train.mode=full")
    before, after, trainer = train_and_compare(cfg)
    changed = moved(before, after, "clip.visual.")
    assert changed and all(k.startswith("clip.visual.attnpool.") for k in changed)
    assert not any(m.training for m in trainer.method.clip.visual.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_resnet_batchnorm_statistics_move_without_the_freeze(tiny_cfg):
    """The counter-check: a locked ResNet whose statistics are not frozen does change its buffers."""
    before, after, _ = train_and_compare(tiny_cfg("method.name=clip", *TINY_RN, "model.lock_image=true", *FAST))
    assert moved(before, after, "clip.visual.") and all("running_" in k or "num_batches" in k
                                                          for k in moved(before, after, "clip.visual."))


@pytest.mark.parametrize("extra", [[], TINY_RN])
def test_our_groups_are_open_clips(extra):
    """image_groups / text_groups (layer decay, the ResNet's partial lock) unlock what open_clip's lock does."""
    cfg = tiny_config(*extra)
    n_image, n_text = cfg.model.lock_groups()
    for n in range(n_text):
        clip = build_method(cfg).clip
        clip.lock_text_tower(unlocked_layers=n)
        ours = {id(p) for g in text_groups(clip.text)[len(text_groups(clip.text)) - n:] for p in g} if n else set()
        assert ours == {id(p) for p in clip.text.parameters() if p.requires_grad}
    clip = build_method(cfg).clip
    assert len(image_groups(clip.visual)) == n_image and len(text_groups(clip.text)) == n_text
    assert sum(map(len, image_groups(clip.visual))) == len(list(clip.visual.parameters()))
    if not extra:  # a ViT: open_clip's lock supports partial unlocking
        for n in range(1, n_image):
            clip = build_method(cfg).clip
            clip.lock_image_tower(unlocked_groups=n)
            assert {id(p) for g in image_groups(clip.visual)[-n:] for p in g} == \
                {id(p) for p in clip.visual.parameters() if p.requires_grad}


@pytest.mark.parametrize("overrides, key", [
    (["model.lock_image_unlocked_groups=1"], "model.lock_image_unlocked_groups"),
    (["model.lock_image=true", "model.lock_image_unlocked_groups=4"], "model.lock_image_unlocked_groups"),
    (["model.lock_text=true", "model.lock_text_unlocked_layers=-1"], "model.lock_text_unlocked_layers"),
    (["model.lock_image=true", "model.lock_image_freeze_bn_stats=true"], "model.lock_image_freeze_bn_stats"),
])
def test_bad_lock_settings_fail_up_front(overrides, key):
    with pytest.raises(ConfigError, match=key):
        tiny_config(*overrides)


# ------------------------------------------------------------------------------------- lr per part
def test_default_groups_are_the_reference_two():
    """No multiplier and no decay: the two groups (decay, no decay) that checkpoints before issue 40 hold."""
    from declip.train.optim import build_optimizer

    cfg = tiny_config("method.name=declip", "model.lock_text=true")
    opt = build_optimizer(build_method(cfg), cfg.optim)
    assert [g["weight_decay"] for g in opt.param_groups] == [cfg.optim.weight_decay, 0.0]
    assert all(g["lr_mult"] == 1.0 and g["part"] == "all" for g in opt.param_groups)


def test_layer_decay_scales_each_tower_group():
    from declip.train.optim import build_optimizer, set_lr

    cfg = tiny_config("method.name=declip", "optim.image_lr_mult=0.5", "optim.layer_decay=0.5",
                      "optim.heads_lr_mult=10")
    method = build_method(cfg)
    opt = build_optimizer(method, cfg.optim)
    set_lr(opt, 1.0)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    groups = image_groups(method.clip.visual)
    for i, group in enumerate(groups):  # the projection (last) at 0.5, each group below it half the one above
        assert {lr_of[id(p)] for p in group if p.requires_grad} == {0.5 * 0.5 ** (len(groups) - 1 - i)}
    assert {lr_of[id(p)] for p in method.projector.parameters()} == {10.0}
    assert lr_of[id(method.clip.logit_scale)] == 1.0  # the logit scale keeps the scheduled lr
    assert lr_of[id(method.clip.text.text_projection.weight)] == 1.0
    assert lr_of[id(method.clip.text.token_embedding.weight)] == 0.5 ** (len(text_groups(method.clip.text)) - 1)


def test_per_part_lrs_in_metrics_and_log(tiny_cfg):
    from helpers import metrics

    cfg = tiny_cfg("method.name=declip", "optim.image_lr_mult=0.1", "optim.heads_lr_mult=10",
                   "model.lock_text=true", "model.lock_text_unlocked_layers=1", *FAST)
    _, _, trainer = train_and_compare(cfg)
    rows = metrics(trainer.out / "metrics.jsonl")
    assert rows and all(r["lr/image"] == pytest.approx(0.1 * r["lr"]) and r["lr/heads"] == pytest.approx(10 * r["lr"])
                        and r["lr/text"] == pytest.approx(r["lr"]) for r in rows)
    assert len({r["lr"] for r in rows}) > 1  # the schedule moves, the multipliers follow it
    log = (trainer.out / "train.log").read_text()
    assert "lr per part: image x0.1, text x1, heads x10" in log
    assert "model.lock_text: the text tower is frozen but its last 1 of 4 groups" in log
    assert "parameters trainable / total: image " in log


def test_changed_lr_groups_refuse_to_resume_in_one_line(tiny_cfg):
    from declip.errors import CheckpointError

    cfg = tiny_cfg("method.name=clip", "train.steps=2", "eval.builtin=false")
    train_and_compare(cfg)
    changed = tiny_cfg("method.name=clip", "train.steps=3", "eval.builtin=false", "optim.image_lr_mult=0.5")
    with pytest.raises(CheckpointError, match="optimizer has parameter groups"):
        Trainer(changed, resume="latest", allow_config_change=True)


@pytest.mark.parametrize("overrides, key", [
    (["optim.image_lr_mult=0"], "optim.image_lr_mult"),
    (["optim.layer_decay=1.5"], "optim.layer_decay"),
])
def test_bad_lr_settings_fail_up_front(overrides, key):
    with pytest.raises(ConfigError, match=key):
        tiny_config(*overrides)


# ------------------------------------------------------------------------------- every method, SyncBN
# FILIP with its global term on beside the dense one (its own default trains the dense term alone, which leaves
# the global projections and logit scale without a gradient by design)
METHODS = {"clip": [], "declip": [], "slip": ["method.simclr_hidden_dim=32", "method.simclr_out_dim=16"],
           "filip": ["method.filip_topk=3", "method.clip_weight=0.4", "method.filip_weight=0.2"],
           "defilip": ["method.filip_topk=3"]}


@pytest.mark.parametrize("lock", ["model.lock_image=true", "model.lock_text=true"])
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_its_heads_on_a_locked_tower(name, lock):
    """One forward/backward of each method with a locked tower: no gradient reaches it, every trainable parameter
    of the rest gets one (the heads on the locked tower included)."""
    from declip.train.accel import prepare_method
    from dist_worker import make_batch

    cfg = tiny_config(f"method.name={name}", *METHODS[name], lock, small=True)
    torch.manual_seed(0)
    method = build_method(cfg)
    prepare_method(method, cfg, "cpu", world_size=1)
    losses, _ = method.train()(make_batch(cfg, 4))
    sum(losses.values()).backward()
    locked = method.clip.visual if "image" in lock else method.clip.text
    assert all(p.grad is None and not p.requires_grad for p in locked.parameters())
    trainable = [n for n, p in method.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in method.parameters() if p.requires_grad), trainable
    if name in ("declip", "slip", "filip", "defilip"):  # the method's own heads train
        assert any(not n.startswith("clip.") for n in trainable)


def test_frozen_statistics_survive_sync_batchnorm():
    """train.sync_bn converts the ResNet's BatchNorm after the lock would have frozen it: the freeze is applied
    to the converted layers, which stay in eval mode through train()."""
    from declip.models.locks import StatsFrozenSyncBatchNorm
    from declip.train.accel import prepare_method

    cfg = tiny_config("method.name=clip", *TINY_RN, "model.lock_image=true", "model.lock_image_freeze_bn_stats=true",
                      "train.sync_bn=true")
    method = build_method(cfg)
    prepare_method(method, cfg, "cpu", world_size=1)
    method.train()
    norms = [m for m in method.clip.visual.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert norms and all(isinstance(m, StatsFrozenSyncBatchNorm) and not m.training for m in norms)
    assert set(method.clip.state_dict()) == set(build_method(cfg).clip.state_dict())  # the same keys
