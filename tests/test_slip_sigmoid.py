"""SLIP and the sigmoid (SigLIP) pair loss: each new loss against a plain re-implementation of its equation, the
factory's choice reaching every method, SLIP's head and views, and the configuration checks."""
import math

import pytest
import torch
import torch.nn.functional as F

from declip.config import ConfigError
from declip.losses import build_pair_loss
from declip.losses.contrastive import Gathered, SoftmaxPairLoss
from declip.losses.sigmoid import SigmoidPairLoss
from declip.losses.simclr import NTXentLoss
from declip.methods import build_method
from declip.train.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")


def siglip_reference(img, txt_all, offset, s, b):
    """-1/B sum_ij log sigmoid(z_ij (s x_i.y_j + b)), z = +1 on the positive, -1 elsewhere: term by term."""
    total = 0.0
    for i in range(img.shape[0]):
        for j in range(txt_all.shape[0]):
            z = 1.0 if j == offset + i else -1.0
            logit = s * float(img[i] @ txt_all[j]) + b
            total += math.log(1.0 / (1.0 + math.exp(-z * logit)))
    return -total / img.shape[0]


def ntxent_reference(a_all, b_all, rows, tau):
    """SimCLR's NT-Xent for the given global rows: for view a's row i, softmax over every column of b and of a
    except a_i itself, the positive b_i; likewise for view b; the two directions averaged."""
    def one(x, y, i):
        pos = math.exp(float(x[i] @ y[i]) / tau)
        neg = sum(math.exp(float(x[i] @ y[j]) / tau) for j in range(len(y)) if j != i)
        neg += sum(math.exp(float(x[i] @ x[j]) / tau) for j in range(len(x)) if j != i)
        return -math.log(pos / (pos + neg))
    return sum((one(a_all, b_all, i) + one(b_all, a_all, i)) / 2 for i in rows) / len(rows)


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_sigmoid_loss_equals_the_siglip_equation():
    loss_fn = SigmoidPairLoss()
    with torch.no_grad():  # away from the init, so scale and bias both matter
        loss_fn.logit_scale.fill_(math.log(7.0))
        loss_fn.logit_bias.fill_(-2.5)
    img, txt = unit(5, 8, seed=1), unit(5, 8, seed=2)
    scale = loss_fn.scale(None)
    loss, logits = loss_fn(Gathered(img, gather=False), Gathered(txt, gather=False), scale)
    assert abs(loss.item() - siglip_reference(img, txt, 0, 7.0, -2.5)) < 1e-5
    torch.testing.assert_close(logits, 7.0 * img @ txt.t() - 2.5)
    # one direction against a bigger (gathered) column set, this rank's positives at an offset
    txt_all = unit(10, 8, seed=3)
    one_way = loss_fn.image_to_text(img, txt_all, 5, scale)
    assert abs(one_way.item() - siglip_reference(img, txt_all, 5, 7.0, -2.5)) < 1e-5


def test_sigmoid_loss_init_is_siglips_and_its_parameters_train_without_decay():
    loss_fn = SigmoidPairLoss()
    assert loss_fn.logit_scale.item() == pytest.approx(math.log(10)) and loss_fn.logit_bias.item() == -10.0
    method = build_method(pytest.importorskip("helpers").tiny_config("method.name=clip",
                                                                     "method.contrastive_loss=sigmoid"))
    assert isinstance(method.contrastive, SigmoidPairLoss)
    assert not method.clip.logit_scale.requires_grad  # the towers' scale takes no part
    opt = build_optimizer(method, method.cfg.optim)
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(method.contrastive.logit_scale) in no_decay and id(method.contrastive.logit_bias) in no_decay
    assert "contrastive.logit_bias" in method.state_dict()  # checkpointed with the method
    # the reference's floor of 3 would undo SigLIP's init (log 10 = 2.3): after a step it stays, capped at log 100
    method.after_step()
    assert method.contrastive.logit_scale.item() == pytest.approx(math.log(10))
    assert method.clip.logit_scale.item() >= 3.0  # the towers' own clamp is unchanged
    with torch.no_grad():
        method.contrastive.logit_scale.fill_(9.0)
    method.after_step()
    assert method.contrastive.logit_scale.item() == pytest.approx(math.log(100))


def test_the_factory_serves_every_method(tiny_cfg):
    assert isinstance(build_pair_loss("softmax"), SoftmaxPairLoss)
    with pytest.raises(ValueError, match="softmax | sigmoid"):
        build_pair_loss("hinge")
    for name in ("clip", "declip", "slip"):
        method = build_method(tiny_cfg(f"method.name={name}", "method.contrastive_loss=sigmoid",
                                       "method.simclr_hidden_dim=32"))
        assert isinstance(method.contrastive, SigmoidPairLoss), name


def test_declip_sigmoid_uses_the_sigmoid_loss_for_multi_view_and_nn(tiny_cfg):
    """Every image-text term of DeCLIP (4 view pairs + the NN term) follows method.contrastive_loss: the total
    is what the sigmoid equation gives for each term, recomputed here from the same features."""
    cfg = tiny_cfg("method.name=declip", "method.contrastive_loss=sigmoid", "method.simsiam_weight=0",
                   "method.mlm_weight=0", small=True)
    torch.manual_seed(0)
    method = build_method(cfg)
    from dist_worker import make_batch

    batch = make_batch(cfg, 4)
    seen = []
    method.contrastive.register_forward_hook(lambda m, i, o: seen.append(o[0]))
    losses, metrics = method(batch)
    assert len(seen) == 4 and "logit_bias" in metrics
    assert losses["clip"].item() == pytest.approx(cfg.method.clip_weight * sum(x.item() for x in seen) / 4,
                                                  rel=1e-6)
    assert torch.isfinite(losses["nn"])


def test_ntxent_equals_the_simclr_equation():
    a_all, b_all = unit(6, 5, seed=4), unit(6, 5, seed=5)
    loss_fn = NTXentLoss(0.1)
    loss, _ = loss_fn(Gathered(a_all, gather=False), Gathered(b_all, gather=False))
    assert abs(loss.item() - ntxent_reference(a_all, b_all, range(6), 0.1)) < 1e-5
    # rank 1 of 2: its rows 3..5 against every column (as the gather gives them)
    a, b = Gathered(a_all[3:], gather=False), Gathered(b_all[3:], gather=False)
    a.all, a.offset, b.all, b.offset = a_all, 3, b_all, 3
    loss, _ = loss_fn(a, b)
    assert abs(loss.item() - ntxent_reference(a_all, b_all, range(3, 6), 0.1)) < 1e-5


@pytest.mark.parametrize("vision", ["vit", "resnet"])
def test_slip_forward_and_its_head_on_the_pre_projection_feature(tiny_cfg, vision):
    from helpers import TINY_RN

    cfg = tiny_cfg("method.name=slip", "method.simclr_hidden_dim=32", "method.simclr_out_dim=16",
                   *(TINY_RN if vision == "resnet" else []), small=True)
    assert cfg.method.clip_weight == 1.0 and cfg.method.simclr_weight == 1.0  # SLIP's weights, not DeCLIP's
    torch.manual_seed(0)
    method = build_method(cfg)
    spec = method.data_spec(cfg)
    assert (spec.n_views, spec.augment) == (3, "slip")
    width = cfg.model.vision.width * (32 if vision == "resnet" else 1)
    assert method.simclr_head.net[0].in_features == width  # the trunk feature, not the embedding
    assert method.simclr_head.net[-1].out_features == 16
    from dist_worker import make_batch

    batch = make_batch(cfg, 4)
    assert batch["images"].shape[1] == 3
    losses, metrics = method(batch)
    assert set(losses) == {"clip", "simclr"} and "simclr_acc" in metrics
    # the embedding of encode_image_with_trunk is the towers' own encode_image
    from declip.models.towers import encode_image_with_trunk

    method.eval()
    x = batch["images"][:, 0]
    emb, trunk = encode_image_with_trunk(method.clip, x)
    torch.testing.assert_close(emb, method.clip.encode_image(x))
    assert trunk.shape == (4, width)
    # embedding the first images only (SLIP's base view) gives the same rows and the same trunk
    first, trunk_again = encode_image_with_trunk(method.clip, x, embed=2)
    assert first.shape[0] == 2
    torch.testing.assert_close(first, emb[:2])
    torch.testing.assert_close(trunk_again, trunk)


def test_slip_simclr_weight_zero_builds_no_head_and_takes_one_view(tiny_cfg):
    cfg = tiny_cfg("method.name=slip", "method.simclr_weight=0")
    method = build_method(cfg)
    assert not hasattr(method, "simclr_head") and not any("simclr" in k for k in method.state_dict())
    spec = method.data_spec(cfg)
    assert (spec.n_views, spec.augment) == (1, "clip")


def test_slip_views_first_plain_then_mocov2():
    from declip.data.views import P_BLUR, P_FLIP, P_GRAY, P_JITTER, build_train_views
    from PIL import Image

    views = build_train_views("slip", 32, 3)
    assert views.crops[0].scale == (0.5, 1.0) and views.crops[1].scale == (0.2, 1.0)
    image = Image.new("RGB", (48, 40), (120, 30, 200))
    torch.manual_seed(0)
    params = torch.stack([views(image)["aug_params"] for _ in range(40)])  # [40, 3, 13]
    for col in (P_FLIP, P_JITTER, P_GRAY, P_BLUR):
        assert params[:, 0, col].sum() == 0  # the base view: cropped only
    assert params[:, 1:, P_JITTER].sum() > 0 and params[:, 1:, P_BLUR].sum() > 0


def test_slip_config_checks():
    from helpers import tiny_config

    with pytest.raises(ConfigError, match="method.simclr_weight.*both 0"):
        tiny_config("method.name=slip", "method.clip_weight=0", "method.simclr_weight=0")
    with pytest.raises(ConfigError, match="method.simclr_temperature"):
        tiny_config("method.name=slip", "method.simclr_temperature=0")
    with pytest.raises(ConfigError, match="method.contrastive_loss"):
        tiny_config("method.contrastive_loss=hinge")
    assert tiny_config("method.name=slip", "method.clip_weight=0.5").method.clip_weight == 0.5


@pytest.mark.parametrize("case", [["method.name=slip", "method.simclr_hidden_dim=32"],
                                  ["method.name=clip", "method.contrastive_loss=sigmoid"]], ids=["slip", "sigmoid"])
def test_train_eval_export_end_to_end(tmp_path, capsys, monkeypatch, case):
    """`declip train` on the built-in data ends with a zero-shot result; `declip eval` and `declip export` work
    on the checkpoint, and open_clip loads the exported towers (the training-only head and loss stay behind)."""
    import open_clip

    from declip.cli import main as cli_main
    from declip.export import WEIGHTS_NAME
    from helpers import tiny_overrides
    from safetensors.torch import load_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    assert cli_main(["train", *tiny_overrides(*case, "train.steps=2", f"train.output_dir={run}",
                                              small=True)]) == 0
    assert "zero-shot top-1" in capsys.readouterr().out
    ckpt = run / "ckpt_00000002.pt"
    assert cli_main(["eval", "--checkpoint", str(ckpt), "--max-images", "8", "--num-workers", "0",
                     "--brief"]) == 0
    assert "top1" in capsys.readouterr().out.replace("-", "")
    assert cli_main(["export", str(ckpt), str(tmp_path / "export")]) == 0
    weights = load_file(str(tmp_path / "export" / WEIGHTS_NAME))
    assert not any(k.startswith(("simclr", "contrastive")) for k in weights)
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'export'}")
    state = torch.load(ckpt, weights_only=True)["model"]
    assert torch.equal(model.visual.state_dict()["conv1.weight"], state["clip.visual.conv1.weight"])
