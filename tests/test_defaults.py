"""Defaults that fit the user's data: the demo's settings stay with the demo, presets only fill gaps, and a
run says at start what a preset chose and whether anything will be evaluated."""
import re
import shlex
from pathlib import Path

import pytest

from declip.config import (OptimConfig, default_config_path, demo_config_path, from_preset, load_config,
                           own_data_config_path)
from declip.train.trainer import train

DATA_DOC = Path(__file__).resolve().parents[1] / "docs" / "data-formats.md"
OWN = ["data.source=manifest", "data.path=captions.jsonl", "data.root=images"]


def test_own_data_starts_from_general_defaults_not_the_demo():
    assert default_config_path([]) == demo_config_path()
    assert default_config_path(["data.source=builtin", "train.steps=5"]) == demo_config_path()
    assert default_config_path(OWN) == own_data_config_path()
    cfg = load_config(default_config_path(OWN), OWN)
    demo = load_config(demo_config_path())
    assert (cfg.method.queue_size, cfg.method.simsiam_proj_dim, cfg.method.simsiam_pred_dim) == (65536, 1024, 512)
    assert cfg.model.text.context_length == 77 and demo.model.text.context_length == 16
    assert cfg.model.preset == "vit-b-32" and cfg.model.vision.image_size == 224
    assert cfg.optim.lr_scaling == "sqrt" and cfg.optim.lr_scale(128) == pytest.approx((128 / 4096) ** 0.5)
    assert cfg.eval.builtin is False  # the shapes task says nothing about the user's data
    assert load_config(None, [*OWN, "eval.builtin=true"]).eval.builtin is True  # unless asked for


def test_lr_scaling_rules():
    assert OptimConfig().lr_scale(64) == 1.0  # the recipe configs: lr as written
    assert OptimConfig(lr_scaling="sqrt", base_batch=4096).lr_scale(1024) == pytest.approx(0.5)
    assert OptimConfig(lr_scaling="linear", base_batch=256).lr_scale(1024) == pytest.approx(4.0)


def test_switching_kind_brings_the_sibling_presets_fields():
    cfg = load_config(demo_config_path(), ["model.vision.kind=vit"])  # the demo is a tiny ResNet
    assert cfg.model.preset == "tiny-vit" and cfg.model.vision.layers == 2 and cfg.model.vision.patch_size == 8
    assert cfg.model.vision.image_size == 32  # the demo file set it: explicit values still win
    cfg = load_config(None, ["model.preset=vit-b-32", "model.vision.kind=resnet"])
    assert cfg.model.preset == "rn50" and cfg.model.vision.layers == [3, 4, 6, 3]


def test_presets_fill_only_what_was_not_set_and_say_so():
    cfg = load_config(None, ["model.preset=rn50", "model.embed_dim=256", "model.text.layers=6"])
    assert cfg.model.embed_dim == 256 and cfg.model.text.layers == 6 and cfg.model.text.width == 512
    filled = from_preset(cfg)
    assert "model.embed_dim" not in filled and "model.text.layers" not in filled
    assert filled["model.text.width"] == 512 and filled["model.vision.layers"] == [3, 4, 6, 3]


def test_start_of_run_names_preset_values_and_missing_evaluation(tiny_cfg):
    cfg = tiny_cfg("method.name=clip", "train.steps=1", "eval.builtin=false", "model.vision.layers=1")
    train(cfg)
    log = (Path(cfg.train.output_dir) / "train.log").read_text()
    line = next(ln for ln in log.splitlines() if "from preset tiny-vit:" in ln)
    assert "model.vision.head_width=64" in line and "model.vision.layers" not in line
    assert "no evaluation task" in log


def test_documented_own_data_command_is_one_command_with_general_defaults():
    text = DATA_DOC.read_text()
    section = text.split("## Own data: the general defaults", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```(?:bash|sh)?\n(declip train[^\n]*)\n```", section)
    assert len(commands) >= 1, section[:500]
    argv = shlex.split(commands[0])[2:]
    overrides = [a for a in argv if "=" in a and not a.startswith("--")]
    assert "--config" not in argv
    cfg = load_config(default_config_path(overrides), overrides)
    assert cfg.data.source == "manifest" and cfg.method.queue_size == 65536 and cfg.model.text.context_length == 77
