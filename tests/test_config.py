from pathlib import Path

import pytest
import yaml

from declip.config import ConfigError, demo_config_path, dump_config, load_config

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


SHIPPED = sorted((ROOT / "src/declip/configs").glob("*.yaml"))  # the package's recipes (configs/ links to them)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_config_round_trips_through_dump_config(path, tmp_path):
    data = (yaml.safe_load(path.read_text()) or {}).get("data", {})
    needs_data = data.get("source", "builtin") != "builtin" and not data.get("path")  # the user names the data
    cfg = load_config(path, ["data.source=manifest", "data.path=pairs.jsonl", "data.root=images"] if needs_data
                      else [])
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(dump_config(cfg))
    again = load_config(dumped)
    assert again == cfg  # every value survives, and the dump is itself a valid config file
    assert dump_config(again) == dump_config(cfg)


YFCC15M = sorted((ROOT / "configs").glob("*_yfcc15m.yaml"))


def test_the_parametrized_config_tests_see_every_shipped_file():  # an empty glob would skip them silently
    methods = ("clip", "declip", "slip", "filip")  # DeFILIP: the reference has a ViT config only
    assert {p.name for p in YFCC15M} == {f"{method}_{model}_yfcc15m.yaml" for method in methods
                                         for model in ("rn50", "vitb32")} | {"defilip_vitb32_yfcc15m.yaml"}
    assert {p.name for p in SHIPPED} == {p.name for p in YFCC15M} | {"demo.yaml", "declip_small_data.yaml",
                                                                     "own_data.yaml"}


@pytest.mark.parametrize("path", YFCC15M, ids=[p.stem for p in YFCC15M])
def test_yfcc15m_configs_are_the_reference_recipe(path):
    """The published DeCLIP/CLIP YFCC15M recipe, 32 GPUs x 128 = global batch 4096, ~32 epochs."""
    method, model = path.stem.split("_")[:2]  # declip_vitb32_yfcc15m -> declip, vitb32
    cfg = load_config(path)
    assert cfg.method.name == method
    assert cfg.model.preset == {"vitb32": "vit-b-32", "rn50": "rn50"}[model]
    o = cfg.optim
    # SLIP's and FILIP's own schedules (experiments/{slip,filip}_experiments/yfcc15m/*/config.yaml): warm-up
    # 1e-4 -> 5e-4, weight decay 0.5
    lr, wd = (5e-4, 0.5) if method in ("slip", "filip") else (1e-3, 0.1)
    assert (o.lr, o.weight_decay, o.betas, o.eps, o.min_lr) == (lr, wd, [0.9, 0.98], 1e-8, 0.0)
    assert (o.warmup_steps, o.warmup_start_lr, o.cosine_steps) == (2500, 1e-4, 128001)
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.precision) == (128001, 128, "fp32")
    assert cfg.data.source == "manifest" and cfg.eval.val_manifest and cfg.eval.val_root
    m = cfg.method
    if method in ("filip", "defilip"):  # experiments/{filip,defilip}_experiments/yfcc15m/*/config.yaml
        assert (m.filip_dim, m.filip_topk, m.augment, m.contrast_text) == (256, 16, "mocov2", "masked")
        assert (m.clip_weight, m.filip_weight) == ((0.0, 1.0) if method == "filip" else (0.4, 0.2))
    if method in ("declip", "defilip"):
        assert (m.clip_weight, m.simsiam_weight, m.mlm_weight, m.nn_weight) == (0.4, 0.2, 0.2, 0.2)
        assert (m.queue_size, m.mask_prob, m.simsiam_proj_dim, m.simsiam_pred_dim) == (65536, 0.15, 1024, 512)
        assert m.eda_ops == ["synonym", "swap", "delete"]
    if method == "slip":
        m = cfg.method
        assert (m.clip_weight, m.simclr_weight, m.simclr_temperature) == (1.0, 1.0, 0.1)
        assert (m.simclr_hidden_dim, m.simclr_out_dim, m.contrastive_loss) == (4096, 256, "softmax")
        assert (cfg.train.ckpt_every, cfg.eval.every) == (500, 2000)
        from declip.models.towers import trunk_dim

        assert trunk_dim(cfg.model) == {"vitb32": 768, "rn50": 2048}[model]  # ref: clip.feature_dim
    if model == "rn50":
        assert cfg.model.vision.kind == "resnet" and cfg.model.vision.layers == [3, 4, 6, 3]
        assert cfg.model.embed_dim == 1024
    else:  # FILIP's ViT config: embed_dim 768 for both towers
        assert cfg.model.vision.kind == "vit" and cfg.model.vision.patch_size == 32
        assert cfg.model.vision.image_size == 224 and cfg.model.embed_dim == (768 if method == "filip" else 512)


def test_demo_is_the_packaged_file():
    assert (ROOT / "configs" / "demo.yaml").read_text() == demo_config_path().read_text()
    cfg = load_config(demo_config_path())
    assert cfg.method.name == "declip" and cfg.data.source == "builtin"
    m = cfg.method  # demo-sized towers and data, the reference loss weights
    assert (m.clip_weight, m.simsiam_weight, m.mlm_weight, m.nn_weight) == (0.4, 0.2, 0.2, 0.2)
