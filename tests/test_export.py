"""``declip export``: open_clip loads the folder offline ('local-dir:') and computes our embeddings."""
import json

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from declip.cli import main as cli_main
from declip.data.tokenizer import tokenize
from declip.data.views import IMAGENET_MEAN, IMAGENET_STD
from declip.errors import CheckpointError
from declip.export import CONFIG_NAME, WEIGHTS_NAME, export_open_clip
from declip.methods import build_method
from helpers import TINY_RN

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # even where the environment says otherwise


def make_checkpoint(cfg, path):
    """A DeCLIP checkpoint whose towers are not at their initial values (an export of init would hide a
    missed key), with heads and a queue that must NOT be exported."""
    torch.manual_seed(0)
    method = build_method(cfg)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.01 * torch.randn_like(p))
        method.clip.logit_scale.fill_(4.2)
    torch.save({"model": method.state_dict(), "config": cfg.to_dict(), "step": 7}, path)
    return method.eval()


@pytest.mark.parametrize("preset", ["tiny-vit", "tiny-rn"])
def test_open_clip_local_dir_gives_our_embeddings(tiny_cfg, tmp_path, preset):
    cfg = tiny_cfg(*(TINY_RN if preset == "tiny-rn" else ["model.preset=tiny-vit"]))
    ours = make_checkpoint(cfg, tmp_path / "ckpt.pt")
    out = export_open_clip(tmp_path / "ckpt.pt", tmp_path / "export")

    weights = load_file(str(out / WEIGHTS_NAME))
    assert (out / WEIGHTS_NAME).stat().st_mode & 0o044 == (out / CONFIG_NAME).stat().st_mode & 0o044  # not 0600
    assert set(weights) == set(ours.clip.state_dict())  # towers only, open_clip key names
    assert not any(k.startswith(("queue", "projector", "predictor", "mlm_head")) for k in weights)
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["model_cfg"]["text_cfg"]["pool_type"] == "eos" and config["declip"]["step"] == 7

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    model.eval()
    size = cfg.model.vision.image_size
    assert isinstance(model, open_clip.CustomTextCLIP)
    assert torch.equal(model.logit_scale.detach(), ours.clip.logit_scale.detach())
    normalize = preprocess.transforms[-1]
    assert tuple(normalize.mean) == IMAGENET_MEAN and tuple(normalize.std) == IMAGENET_STD
    from PIL import Image

    assert preprocess(Image.new("RGB", (3 * size, 2 * size))).shape == (3, size, size)

    captions = ["a red circle on a blue background", "two small green triangles", "x " * 100]
    oc_tokens = open_clip.get_tokenizer(f"local-dir:{out}")(captions)
    assert torch.equal(oc_tokens, tokenize(captions))  # the open_clip tokenizer is ours minus the mask token
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), ours.clip.encode_image(images),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.encode_text(oc_tokens), ours.clip.encode_text(oc_tokens),
                                   rtol=1e-5, atol=1e-5)


def test_cli_export_and_errors(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg("method.name=clip")
    make_checkpoint(cfg, tmp_path / "ckpt.pt")
    assert cli_main(["export", str(tmp_path / "ckpt.pt"), str(tmp_path / "x")]) == 0
    assert "local-dir:" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "x").iterdir()} == {CONFIG_NAME, WEIGHTS_NAME, "README.md"}
    assert "49408" in (tmp_path / "x" / "README.md").read_text()  # the tokenizer note

    torch.save({"model": {"queue.bank": torch.zeros(2)}, "config": cfg.to_dict()}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="clip"):
        export_open_clip(tmp_path / "bad.pt", tmp_path / "y")
