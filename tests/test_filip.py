"""FILIP's dense loss against a plain re-implementation of the reference equation, chunking, the no-head rule,
and FILIP / DeFILIP end to end (train on the built-in data, eval with both similarities, export)."""
import math

import pytest
import torch
import torch.nn.functional as F

from declip.config import ConfigError
from declip.losses.filip import TokenwiseInfoNCE, dense_memory_bytes
from declip.methods import build_method

pytestmark = pytest.mark.usefixtures("one_thread")


def plain_dense_loss(image, text, lengths, k, scale):
    """The reference equation written out with loops (Sense-GVT/DeCLIP prototype/model/filip.py), padding
    excluded: caption b's valid tokens are its first lengths[b] positions (SOT .. EOT)."""
    n = image.shape[0]
    img = [F.normalize(image[b], dim=-1) for b in range(n)]
    txt = [F.normalize(text[b, :lengths[b]], dim=-1) for b in range(n)]  # padding dropped outright
    kept_img, kept_txt = [], []
    for b in range(n):
        sim = img[b] @ txt[b].t()  # [Ni, valid words]
        kept_img.append(img[b][sim.sum(dim=1).argsort(descending=True)[:k]])
        kept_txt.append(txt[b][sim.sum(dim=0).argsort(descending=True)[:k]])
    li, lt = torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            li[i, j] = sum(max(float(p @ q) for q in kept_txt[j]) for p in img[i]) / len(img[i])
            lt[j, i] = sum(max(float(q @ p) for p in kept_img[i]) for q in txt[j]) / len(txt[j])
    labels = torch.arange(n)
    return float((F.cross_entropy(scale * li, labels) + F.cross_entropy(scale * lt, labels)) / 2)


def random_case(seed, n=5, ni=6, nt=9, d=8, lengths=(9, 2, 5, 3, 7)):
    g = torch.Generator().manual_seed(seed)
    image, text = torch.randn(n, ni, d, generator=g), torch.randn(n, nt, d, generator=g)
    valid = torch.arange(nt)[None] < torch.tensor(lengths)[:, None]
    return image, text, valid, list(lengths)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_loss_equals_plain_reimplementation_with_topk_and_padding(seed):
    image, text, valid, lengths = random_case(seed)
    k, scale = 3, 7.5
    loss, _, _ = TokenwiseInfoNCE(topk=k, chunk=2)(image, text, valid, torch.tensor(scale), gather=False)
    assert float(loss) == pytest.approx(plain_dense_loss(image, text, lengths, k, scale), abs=1e-5)
    # padding never wins a max nor counts in a mean: huge padding features change nothing
    loud = text.clone()
    loud[~valid] = 1e3 * torch.randn(int((~valid).sum()), text.shape[2])
    loss_loud, _, _ = TokenwiseInfoNCE(topk=k, chunk=2)(image, loud, valid, torch.tensor(scale), gather=False)
    assert float(loss_loud) == pytest.approx(float(loss), abs=1e-6)
    # ... whereas counting the padding (the reference as written) gives another loss
    all_valid = torch.ones_like(valid)
    loss_ref, _, _ = TokenwiseInfoNCE(topk=k)(image, loud, all_valid, torch.tensor(scale), gather=False)
    assert abs(float(loss_ref) - float(loss)) > 1e-3


def test_topk_selection_matters():
    image, text, valid, lengths = random_case(3)
    full = TokenwiseInfoNCE(topk=100)(image, text, valid, torch.tensor(5.0), gather=False)[0]
    top2 = TokenwiseInfoNCE(topk=2)(image, text, valid, torch.tensor(5.0), gather=False)[0]
    assert float(full) == pytest.approx(plain_dense_loss(image, text, lengths, 100, 5.0), abs=1e-5)
    assert abs(float(full) - float(top2)) > 1e-4


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunked_equals_unchunked_loss_and_gradients(chunk):
    image, text, valid, _ = random_case(4)
    results = []
    for c in (0, chunk):
        img, txt = image.clone().requires_grad_(), text.clone().requires_grad_()
        loss, _, _ = TokenwiseInfoNCE(topk=3, chunk=c)(img, txt, valid, torch.tensor(6.0), gather=False)
        loss.backward()
        results.append((loss.detach(), img.grad, txt.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_memory_formula_vitb32_reference_case():
    text = dense_memory_bytes(128, 77, 4096, 16, chunk=256)
    unchunked = dense_memory_bytes(128, 77, 4096, 16, chunk=0)
    assert text["block"] == 4 * 128 * 77 * 256 * 16 and unchunked["block"] == 16 * text["block"]
    assert text["saved"] == 12 * 128 * 77 * 4096


@pytest.mark.parametrize("name", ["filip", "defilip"])
def test_weight_zero_builds_no_dense_head(tiny_cfg, name):
    with_dense = build_method(tiny_cfg(f"method.name={name}", small=True))
    # FILIP's own default trains the dense term alone: without it, its global term must be switched on
    without = build_method(tiny_cfg(f"method.name={name}", "method.filip_weight=0", "method.clip_weight=1",
                                    small=True))
    assert any(n.startswith("dense.") for n, _ in with_dense.named_parameters())
    assert not any("dense" in n for n, _ in without.named_parameters())


@pytest.mark.parametrize("name", ["filip", "defilip"])
@pytest.mark.parametrize("floor", [None, 0.0, 4.5])
def test_dense_logit_scale_is_clamped_like_the_global_one(tiny_cfg, name, floor):
    """The reference's FILIP / DeFILIP solvers clamp the dense scale into [3, 6] (log space) around every step, as
    they clamp the global one: after_step takes both into [model.logit_scale_min, 6], the global and the dense
    scale landing on the same value from the same start, whatever the floor; the ceiling is 6 for both."""
    extra = [] if floor is None else [f"model.logit_scale_min={floor}"]
    method = build_method(tiny_cfg(f"method.name={name}", *extra, small=True))
    dense, global_ = method.dense.heads.logit_scale_dense, method.clip.logit_scale
    assert dense.item() == pytest.approx(global_.item()) == pytest.approx(math.log(1 / 0.07))
    method.after_step()
    expected = max(math.log(1 / 0.07), 3.0 if floor is None else floor)
    assert dense.item() == pytest.approx(expected) and global_.item() == pytest.approx(expected)
    with torch.no_grad():
        dense.fill_(7.5)
        global_.fill_(-1.0)
    method.after_step()
    assert dense.item() == pytest.approx(6.0)
    assert global_.item() == pytest.approx(3.0 if floor is None else floor)


def test_dense_logit_scale_is_clamped_under_the_sigmoid_loss(tiny_cfg):
    """The dense loss stays a softmax under method.contrastive_loss=sigmoid, so its scale keeps the clamp."""
    method = build_method(tiny_cfg("method.name=filip", "method.contrastive_loss=sigmoid", small=True))
    with torch.no_grad():
        method.dense.heads.logit_scale_dense.fill_(1.0)
    method.after_step()
    assert method.dense.heads.logit_scale_dense.item() == pytest.approx(3.0)


def test_all_filip_weights_zero_is_a_config_error(tiny_cfg):
    with pytest.raises(ConfigError, match=r"\(method.filip_weight=0\): method.filip_weight: method.clip_weight and "
                       "method.filip_weight are both 0"):
        tiny_cfg("method.name=filip", "method.filip_weight=0")  # clip_weight: FILIP's own default 0


def test_dense_logit_scale_starts_at_one_over_007_and_is_not_decayed(tiny_cfg):
    from declip.train.optim import no_decay  # the rule the trainer applies, by name

    method = build_method(tiny_cfg("method.name=filip", small=True))
    assert float(method.dense.heads.logit_scale_dense.detach()) == pytest.approx(math.log(1 / 0.07))
    params = dict(method.named_parameters())
    assert no_decay("dense.heads.logit_scale_dense", params["dense.heads.logit_scale_dense"])
    assert not no_decay("dense.heads.image.weight", params["dense.heads.image.weight"])


@pytest.mark.parametrize("name", ["filip", "defilip"])
def test_train_then_eval_and_export_the_checkpoint(tiny_cfg, tmp_path, capsys, name):
    import open_clip

    from declip.cli import main as cli_main
    from declip.train.checkpoint import list_checkpoints
    from declip.train.trainer import train
    from helpers import metrics

    cfg = tiny_cfg(f"method.name={name}", small=True)
    train(cfg)
    rows = metrics(cfg.train.output_dir)
    assert all(r["filip_raw"] > 0 and "loss/filip" in r for r in rows)
    assert metrics(cfg.train.output_dir, "eval")[-1]["builtin/top1"] >= 0  # zero-shot at the end
    ckpt = list_checkpoints(cfg.train.output_dir)[-1][1]
    assert cli_main(["eval", "--checkpoint", str(ckpt), "--builtin", "--brief"]) == 0
    assert "builtin: top1=" in capsys.readouterr().out
    assert cli_main(["export", str(ckpt), str(tmp_path / "exp")]) == 0
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'exp'}")
    assert not any("dense" in k for k in model.state_dict())
