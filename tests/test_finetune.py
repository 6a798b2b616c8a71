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
