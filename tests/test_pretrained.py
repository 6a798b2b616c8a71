"""``model.init_from`` (issue 31): the towers start from an open_clip model saved by the test, offline, and then
compute exactly that model's features; a wrong architecture, a missing file and an offline download each fail
in one line; a resumed run keeps its checkpoint's weights."""
import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from declip.config import ConfigError
from declip.errors import CheckpointError
from declip.export import CONFIG_NAME, WEIGHTS_NAME, export_open_clip
from declip.models.pretrained import read_weights
from declip.models.towers import open_clip_model_cfg
from declip.train.trainer import Trainer, train
from declip.vocab import MASK_ID
from test_export import make_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # even where the environment says otherwise


def open_clip_clip(cfg) -> open_clip.model.CLIP:
    """open_clip's usual CLIP class (text tower at the top level, 49,408-token vocabulary), trained-looking
    weights, at the tiny config's sizes."""
    mc = open_clip_model_cfg(cfg.model)
    text = {k: mc["text_cfg"][k] for k in ("context_length", "width", "heads", "layers")}
    torch.manual_seed(123)
    model = open_clip.model.CLIP(mc["embed_dim"], mc["vision_cfg"], {**text, "vocab_size": 49408},
                                 quick_gelu=mc["quick_gelu"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def features(model, cfg):
    torch.manual_seed(0)
    images = torch.randn(3, 3, cfg.model.vision.image_size, cfg.model.vision.image_size)
    ids = open_clip.get_tokenizer("ViT-B-32")(["a red circle", "two blue squares", "a photo"],
                                              context_length=cfg.model.text.context_length)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(ids)


def started(cfg):
    trainer = Trainer(cfg)
    try:
        return trainer.method
    finally:
        trainer.close()


def test_open_clip_checkpoint_file_gives_that_models_features(tiny_cfg, tmp_path):
    cfg = tiny_cfg("eval.builtin=false")
    reference = open_clip_clip(cfg)
    path = tmp_path / "openclip.pt"  # as open_clip's training saves it: under state_dict, with DDP's prefix
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    fresh = started(cfg).clip.text.token_embedding.weight.detach().clone()

    method = started(tiny_cfg("eval.builtin=false", f"model.init_from={path}", "train.output_dir=" +
                              str(tmp_path / "init")))
    ours, theirs = features(method.clip.eval(), cfg), features(reference, cfg)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    rows = method.clip.text.token_embedding.weight.detach()
    assert torch.equal(rows[:MASK_ID], reference.token_embedding.weight)
    assert torch.equal(rows[MASK_ID], fresh[MASK_ID])  # the mask token's row: its fresh initialisation
    logged = (tmp_path / "init" / "train.log").read_text()
    assert "mask token's row (49408) fresh" in logged
    assert "initialised fresh: projector, predictor, mlm_head" in logged


def test_declip_export_local_dir_loads_its_towers(tiny_cfg, tmp_path):
    cfg = tiny_cfg("eval.builtin=false")
    trained = make_checkpoint(cfg, tmp_path / "ckpt.pt")
    out = export_open_clip(tmp_path / "ckpt.pt", tmp_path / "export")
    method = started(tiny_cfg("eval.builtin=false", f"model.init_from=local-dir:{out}"))
    for a, b in zip(features(method.clip.eval(), cfg), features(trained.clip, cfg)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_different_architecture_names_the_first_mismatched_tensor(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    folder = tmp_path / "folder"
    folder.mkdir()
    save_file(open_clip_clip(cfg).state_dict(), str(folder / WEIGHTS_NAME))
    (folder / CONFIG_NAME).write_text(json.dumps({"model_cfg": {}}))
    with pytest.raises(CheckpointError, match=r"visual.class_embedding is \(64,\) there but \(32,\) here") as e:
        started(tiny_cfg("eval.builtin=false", "model.vision.width=32", "model.vision.head_width=32",
                         f"model.init_from=local-dir:{folder}"))
    assert "\n" not in str(e.value)


def test_bad_init_from_values_fail_in_one_line(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match="model.init_from: .*nowhere.pt does not exist"):
        tiny_cfg(f"model.init_from={tmp_path / 'nowhere.pt'}")
    with pytest.raises(ConfigError, match="openclip:MODEL/TAG"):
        tiny_cfg("model.init_from=openclip:ViT-B-32")
    with pytest.raises(ConfigError, match="publishes no 'nope' weights"):
        tiny_cfg("model.init_from=openclip:ViT-B-32/nope")
    with pytest.raises(ConfigError, match=r"model.embed_dim=64 but model.init_from=openclip:ViT-B-32/.* has 512"):
        tiny_cfg("model.init_from=openclip:ViT-B-32/laion2b_s34b_b79k")  # the tiny sizes are explicit keys
    with pytest.raises(CheckpointError, match=r"not in open_clip's cache and HF_HUB_OFFLINE is set") as e:
        read_weights("openclip:ViT-B-32/laion2b_s34b_b79k")  # the weights, as a fresh run reads them
    assert "\n" not in str(e.value)


def test_a_resumed_run_keeps_its_checkpoint_weights(tiny_cfg, tmp_path):
    cfg = tiny_cfg("eval.builtin=false", "train.steps=1")
    saved = torch.load(train(cfg)["checkpoint"], map_location="cpu", weights_only=False)["model"]
    path = tmp_path / "openclip.pt"
    path.write_bytes(b"not weights")  # a fresh run would refuse it: the resumed run must not even read it
    with pytest.raises(CheckpointError, match=r"cannot load checkpoint .*openclip.pt: truncated or not a torch "
                                              r"file \(not a pickle of tensors\)"):
        started(tiny_cfg("eval.builtin=false", f"model.init_from={path}", f"train.output_dir={tmp_path / 'new'}"))
    trainer = Trainer(tiny_cfg("eval.builtin=false", "train.steps=2", f"model.init_from={path}"), resume="latest")
    try:
        assert torch.equal(trainer.method.clip.visual.conv1.weight, saved["clip.visual.conv1.weight"])
    finally:
        trainer.close()
