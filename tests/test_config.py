from pathlib import Path

import pytest

from declip.config import Config, ConfigError, demo_config_path, load_config

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*unknown key 'optim\.lrr'"):
        load_config(p)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'optimizer'"):
        load_config(write(tmp_path, "optimizer: {lr: 1}\n"))


def test_wrong_type_names_key_and_file(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml: train\.steps: expected an integer"):
        load_config(write(tmp_path, "train:\n  steps: many\n"))


def test_impossible_value_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml: train\.batch_size: contrastive"):
        load_config(write(tmp_path, "train:\n  batch_size: 1\n"))
    with pytest.raises(ConfigError, match="model.vision.patch_size"):
        load_config(None, ["model.vision.patch_size=7"])


def test_override_errors_name_the_command_line():
    with pytest.raises(ConfigError, match=r"command line \(optim\.lr=-1\): optim\.lr: must be > 0"):
        load_config(None, ["optim.lr=-1"])
    with pytest.raises(ConfigError, match="unknown key 'train.stepz'"):
        load_config(None, ["train.stepz=3"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.steps"])
    with pytest.raises(ConfigError, match="method.name"):
        load_config(None, ["method.name=slipp"])


def test_overrides_are_typed_and_applied(tmp_path):
    cfg = load_config(write(tmp_path, "optim:\n  lr: 1.0e-3\n"), ["optim.lr=5e-4", "train.steps=200",
                                                                  "optim.betas=[0.9,0.95]"])
    assert cfg.optim.lr == 5e-4 and cfg.train.steps == 200 and cfg.optim.betas == [0.9, 0.95]


def test_presets_fill_model_and_explicit_keys_win():
    cfg = load_config(None, ["model.preset=rn50"])
    assert cfg.model.vision.kind == "resnet" and cfg.model.vision.layers == [3, 4, 6, 3]
    assert cfg.model.embed_dim == 1024
    cfg = load_config(None, ["model.preset=vit-b-32", "model.vision.image_size=256"])
    assert cfg.model.vision.image_size == 256 and cfg.model.vision.patch_size == 32


def test_shipped_configs_load():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert isinstance(cfg, Config), path
    ref = load_config(ROOT / "configs" / "declip_vitb32_yfcc15m.yaml")
    assert (ref.optim.lr, ref.optim.weight_decay, ref.optim.betas, ref.optim.eps) == (1e-3, 0.1, [0.9, 0.98], 1e-8)
    assert (ref.optim.warmup_steps, ref.optim.warmup_start_lr, ref.optim.cosine_steps) == (2500, 1e-4, 128001)
    assert ref.train.batch_size == 128 and ref.method.queue_size == 65536
    assert (ref.method.clip_weight, ref.method.simsiam_weight, ref.method.mlm_weight, ref.method.nn_weight) == (
        0.4, 0.2, 0.2, 0.2)


def test_demo_is_the_packaged_file():
    assert (ROOT / "configs" / "demo.yaml").read_text() == demo_config_path().read_text()
    cfg = load_config(demo_config_path())
    assert cfg.method.name == "declip" and cfg.data.source == "builtin"
