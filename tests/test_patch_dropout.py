"""Patch dropout (``model.vision.patch_dropout``, open_clip's PatchDropout): a training-mode ViT drops that share
of its patch tokens, evaluation sees them all; every method's image path takes it; a ResNet tower refuses it."""
import pytest
import torch

from declip.cli import main as cli_main
from declip.config import ConfigError, load_config
from declip.methods import build_method
from declip.models.towers import _image_parts, build_clip
from declip.train.run_dir import check_resume_config
from dist_worker import make_batch
from helpers import TINY, TINY_RN, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("bad", ["-0.1", "1", "1.5"])
def test_share_is_validated(bad):
    with pytest.raises(ConfigError, match=r"model\.vision\.patch_dropout: must be in \[0, 1\)"):
        load_config(None, [f"model.vision.patch_dropout={bad}"])


def test_a_resnet_tower_refuses_it_in_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"model\.vision\.patch_dropout: only a ViT"):
        load_config(None, [*TINY_RN, "model.vision.patch_dropout=0.5"])
    assert cli_main(["train", *TINY, *TINY_RN, "model.vision.patch_dropout=0.5",
                     f"train.output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.vision.patch_dropout" in err[0], err
    assert not (tmp_path / "run").exists(), "refused before anything was written"


def test_training_drops_patches_and_evaluation_sees_them_all():
    """Same weights with and without patch dropout: training mode keeps int(16 x 0.5) = 8 of the 16 patch tokens
    (the class token always stays); eval mode is the P = 0 tower exactly."""
    torch.manual_seed(0)
    dropped = build_clip(tiny_config("model.vision.patch_dropout=0.5").model)
    plain = build_clip(tiny_config().model)
    plain.load_state_dict(dropped.state_dict())  # no parameter or buffer of its own: the same state dict
    images = torch.randn(3, 3, 32, 32)
    embedding, trunk, tokens = _image_parts(dropped.train(), images)
    assert tokens.shape == (3, 8, 64) and trunk.shape == (3, 64) and embedding.shape == (3, 64)
    assert _image_parts(plain.train(), images)[2].shape == (3, 16, 64)
    with torch.no_grad():
        assert not torch.allclose(dropped.encode_image(images), plain.encode_image(images))
        dropped.eval(), plain.eval()
        assert _image_parts(dropped, images)[2].shape == (3, 16, 64)
        torch.testing.assert_close(dropped.encode_image(images), plain.encode_image(images), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["clip", "declip", "slip", "filip", "defilip"])
def test_every_method_trains_through_it(method):
    """Each method's image path (the plain encoder, SLIP's trunk, FILIP/DeFILIP's dense tokens) runs on the kept
    patches in training, with finite losses and a gradient to the ViT's blocks; eval mode gives the P = 0 model."""
    cfg = tiny_config(f"method.name={method}", "model.vision.patch_dropout=0.5", small=True)
    torch.manual_seed(0)
    model = build_method(cfg).train()
    losses, _ = model(make_batch(cfg, 4))
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    block = model.clip.visual.transformer.resblocks[0].mlp.c_fc.weight
    assert block.grad is not None and block.grad.abs().sum() > 0
    assert model.clip.visual.patch_dropout.training and model.clip.visual.patch_dropout.prob == 0.5


def test_trains_and_evaluates_end_to_end(tiny_cfg):
    from declip.train.trainer import train

    summary = train(tiny_cfg("model.vision.patch_dropout=0.5", "train.steps=3"))
    assert summary["step"] == 3 and summary["eval"], summary
    assert 0 <= summary["eval"]["builtin/top1"] <= 100


def test_a_resume_may_change_it_with_allow_config_change():
    """A training setting, not a shape (FLIP tunes without it at the end): refused silently never, accepted with
    --allow-config-change."""
    old = tiny_config("model.vision.patch_dropout=0.5").to_dict()
    new = tiny_config().to_dict()
    with pytest.raises(Exception, match="--allow-config-change"):
        check_resume_config(old, new, allow_change=False)
    assert check_resume_config(old, new, allow_change=True) == ["model.vision.patch_dropout: 0.5 -> 0.0"]
