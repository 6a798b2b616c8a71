"""Precision and memory options on the CPU: fp32 fallback, the gradient scaler with clipping, activation
checkpointing, channels_last, SyncBatchNorm conversion, torch.compile wiring, and the GPU check script."""
from __future__ import annotations

import copy
import logging
from contextlib import nullcontext

import pytest
import torch
import torch.nn as nn

from declip.config import load_config
from declip.data.tokenizer import tokenize
from declip.methods import build_method
from declip.train.accel import SyncBNUnsupported, autocast, effective_precision, prepare_method, scaled_step
from dist_worker import make_batch
from helpers import TINY_RN, load_benchmark, tiny_config, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def small(*overrides: str) -> list[str]:
    """The tests' tiny config, smaller still (two full passes per gradient comparison)."""
    return tiny_overrides(*overrides, small=True)


def grads_after_step(overrides: list[str], seed_batch: int = 1, hook=None):
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    method = build_method(cfg)
    prepare_method(method, cfg, "cpu", world_size=1)
    if hook is not None:
        hook(method)
    method.train()
    losses, _ = method(make_batch(cfg, 6, seed_batch))
    sum(losses.values()).backward()
    return method, {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


def assert_same_grads(a: dict, b: dict, rtol: float = 1e-5) -> None:
    """Equal up to float rounding. The tolerance scales with the largest gradient of all, because some
    gradients are zero in exact arithmetic (attention key biases: softmax ignores a constant shift) and
    hold only rounding noise."""
    assert a.keys() == b.keys() and len(a) > 10
    scale = max(float(g.abs().max()) for g in b.values())
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=rtol * 1e-2 * scale, msg=k)


# ----------------------------------------------------------------------------------------- precision
def test_bf16_fp16_on_cpu_warn_and_run_fp32(caplog):
    with caplog.at_level(logging.WARNING, logger="declip"):
        assert effective_precision("bf16", "cpu") == "fp32"
        assert effective_precision("fp16", "cpu") == "fp32"
    assert "train.precision=bf16 is for CUDA devices" in caplog.text
    assert effective_precision("bf16", "cuda") == "bf16" and effective_precision("fp32", "cpu") == "fp32"


def test_trainer_on_cpu_uses_fp32_without_scaler(tiny_cfg):
    from declip.train.trainer import Trainer

    trainer = Trainer(tiny_cfg("train.precision=fp16", "train.device=cpu", "eval.builtin=false"))
    try:
        assert trainer.precision == "fp32" and not trainer.scaler.is_enabled()
        assert isinstance(autocast(trainer.precision, trainer.device.type), nullcontext)
    finally:
        trainer.close()


def _scaled_setup(grad: torch.Tensor, clip: float):
    w = nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([w], lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale((w * grad).sum()).backward()  # dL/dw = grad, scaled by 1024
    return w, opt, scaler, scaled_step(scaler, opt, [w], clip)


def test_scaled_step_clips_unscaled_gradients():
    w, _, scaler, stepped = _scaled_setup(torch.tensor([3.0, 4.0, 0.0]), clip=1.0)
    assert stepped
    # unscaled gradient (3, 4, 0) has norm 5 -> clipped to norm 1; had the scaled one been clipped, the step
    # would be the same direction but the unscale would shrink it 1024x
    torch.testing.assert_close(w.detach(), torch.tensor([-0.6, -0.8, 0.0]))
    assert scaler.get_scale() == 1024.0


def test_scaled_step_skips_overflow_and_backs_off():
    w, _, scaler, stepped = _scaled_setup(torch.tensor([1.0, float("inf"), 0.0]), clip=1.0)
    assert not stepped
    assert torch.equal(w.detach(), torch.zeros(3))  # the update was skipped, nothing poisoned
    assert scaler.get_scale() == 512.0


def test_scaled_step_without_scaler_always_steps():
    w = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.5)
    (w.sum()).backward()
    assert scaled_step(torch.amp.GradScaler("cpu", enabled=False), opt, [w], 0.0)
    torch.testing.assert_close(w.detach(), torch.full((2,), 0.5))


# ------------------------------------------------------------------------------------ memory options
def test_grad_checkpointing_same_gradients_and_recomputes():
    calls = {"n": 0}

    def count(method):  # a pre-hook: the recompute stops early, once it has what the backward needs
        block = method.clip.visual.transformer.resblocks[0]
        block.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))

    cfg = small("method.name=declip")
    _, plain = grads_after_step(cfg, hook=count)
    assert calls["n"] == 1
    calls["n"] = 0
    method, ckpt = grads_after_step([*cfg, "train.grad_checkpointing=true"], hook=count)
    assert calls["n"] == 2  # forward, then recomputed in the backward: checkpointing is really on
    assert method.clip.text.transformer.grad_checkpointing
    assert_same_grads(ckpt, plain)


def test_channels_last_resnet_same_gradients():
    seen = []

    def watch(method):
        method.clip.visual.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))

    cfg = small(*TINY_RN, "method.name=clip")
    _, plain = grads_after_step(cfg)
    method, cl = grads_after_step([*cfg, "train.channels_last=true"], hook=watch)
    assert seen and seen[0].is_contiguous(memory_format=torch.channels_last)
    assert method.clip.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    # channels_last runs another convolution kernel, whose float32 sums round differently: up to 1.4e-5 on
    # gradients of ~10 on one Xeon (2026-12-06), past rtol 1e-4; a wrong layout is off by O(1), not 1e-3
    assert_same_grads(cl, plain, rtol=1e-3)


def test_sync_bn_converts_the_tower_not_the_heads():
    cfg = small(*TINY_RN, "method.name=declip", "method.mlm_weight=0")  # BN lives in the tower and SimSiam heads
    plain_method, plain = grads_after_step(cfg)
    method, synced = grads_after_step([*cfg, "train.sync_bn=true"])
    bns = [m for m in method.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tower = [m for n, m in method.named_modules()
             if n.startswith("clip.visual.") and isinstance(m, nn.BatchNorm2d | nn.SyncBatchNorm)]
    assert tower and all(isinstance(m, nn.SyncBatchNorm) for m in tower)
    heads = [m for n, m in method.named_modules() if n.startswith(("projector.", "predictor."))
             and isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert heads and not any(isinstance(m, nn.SyncBatchNorm) for m in heads)  # per rank, as the reference
    assert len(bns) == sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain_method.modules())
    assert method.state_dict().keys() == plain_method.state_dict().keys()  # checkpoints load either way
    assert_same_grads(synced, plain)  # one process: SyncBatchNorm is BatchNorm


def test_sync_bn_refused_for_cpu_process_groups():
    cfg = tiny_config("method.name=declip", "train.sync_bn=true", small=True)
    with pytest.raises(SyncBNUnsupported, match="needs CUDA"):
        prepare_method(build_method(cfg), cfg, "cpu", world_size=2)


def compiled_matches_eager(monkeypatch, backend: str | None) -> None:
    """``train.compile=true`` on a tiny CLIP next to an eager copy of it: prepare_method compiles the two towers
    in place (``nn.Module.compile`` is recorded on its way through; ``backend`` replaces torch's default when
    given), the towers really run compiled, their outputs equal the eager copy's, and state_dict keys stay."""
    compiled = []
    real_compile = nn.Module.compile

    def recording(self, *args, **kwargs):
        compiled.append(self)
        if backend is not None:
            kwargs["backend"] = backend
        return real_compile(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "compile", recording)
    cfg = tiny_config("method.name=clip", "train.compile=true", small=True)
    torch.manual_seed(0)
    method = build_method(cfg)
    eager = copy.deepcopy(method).eval()
    keys = list(method.state_dict())
    prepare_method(method, cfg, "cpu", world_size=1)
    assert [id(m) for m in compiled] == [id(method.clip.visual), id(method.clip.text)]  # the towers, in place
    assert list(method.state_dict()) == keys  # no _orig_mod. prefix: checkpoints unaffected

    traced = []  # a pre-hook runs inside the compiled call: is_compiling() is True there, False eagerly
    for tower in (method.clip.visual, method.clip.text):
        tower.register_forward_pre_hook(lambda *a: traced.append(torch.compiler.is_compiling()))
    method.eval()
    size = cfg.model.vision.image_size
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    text = tokenize(["a dog", "a red circle on a blue square", "two cats"], cfg.model.text.context_length)
    with torch.no_grad():
        torch.testing.assert_close(method.clip.encode_image(images), eager.clip.encode_image(images),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(method.clip.encode_text(text), eager.clip.encode_text(text), rtol=1e-5, atol=1e-5)
    assert len(traced) >= 2 and all(traced), traced  # both towers ran through torch.compile


def test_compile_wires_towers_in_place(monkeypatch):
    """The wiring, through dynamo with its 'eager' backend (seconds; inductor's code generation is the slow
    test below)."""
    compiled_matches_eager(monkeypatch, backend="eager")


@pytest.mark.slow
def test_compiled_towers_give_eager_outputs(monkeypatch):
    """torch's default backend (inductor): about a minute of compiling on a 2-core CPU, less with its cache."""
    compiled_matches_eager(monkeypatch, backend=None)


# ------------------------------------------------------------------------------------ GPU check script
def test_gpu_step_check_smoke_on_cpu():
    module = load_benchmark("gpu_step_check")
    result = module.main(["--device", "cpu", "--preset", "tiny-vit", "--batch-size", "4", "--steps", "1",
                          "--warmup", "0", "--image-size", "32", "--precision", "bf16", "method.queue_size=64",
                          "method.simsiam_proj_dim=32", "method.simsiam_pred_dim=16", "model.text.context_length=16"])
    assert result["precision"] == "fp32" and result["losses_finite"] and result["fps"] > 0
