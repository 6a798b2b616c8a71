"""Precision and memory options on the CPU: fp32 fallback, the gradient scaler with clipping, activation
checkpointing, channels_last, SyncBatchNorm conversion, torch.compile wiring, and the GPU check script."""
from __future__ import annotations

import importlib.util
import logging
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from declip.config import load_config
from declip.methods import build_method
from declip.train.accel import SyncBNUnsupported, effective_precision, prepare_method, scaled_step
from dist_worker import SMALL, make_batch

ROOT = Path(__file__).resolve().parents[1]
TINY_RN = ["model.preset=tiny-rn", "model.vision.image_size=32", "model.text.width=32", "model.text.heads=2",
           "model.embed_dim=32", "model.text.context_length=16", "method.queue_size=16",
           "method.simsiam_proj_dim=16", "method.simsiam_pred_dim=8", "train.output_dir=unused"]


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
        assert isinstance(trainer._autocast(), nullcontext)
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

    cfg = ["method.name=declip", *SMALL]
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

    cfg = ["method.name=clip", *TINY_RN]
    _, plain = grads_after_step(cfg)
    method, cl = grads_after_step([*cfg, "train.channels_last=true"], hook=watch)
    assert seen and seen[0].is_contiguous(memory_format=torch.channels_last)
    assert method.clip.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert_same_grads(cl, plain, rtol=1e-4)


def test_sync_bn_converts_the_tower_not_the_heads():
    cfg = ["method.name=declip", "method.mlm_weight=0", *TINY_RN]  # BN lives in the tower and SimSiam heads
    plain_method, plain = grads_after_step(cfg)
    method, synced = grads_after_step([*cfg, "train.sync_bn=true"])
    bns = [m for m in method.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tower = [m for n, m in method.named_modules() if n.startswith("clip.visual.") and isinstance(m, nn.BatchNorm2d | nn.SyncBatchNorm)]
    assert tower and all(isinstance(m, nn.SyncBatchNorm) for m in tower)
    heads = [m for n, m in method.named_modules() if n.startswith(("projector.", "predictor."))
             and isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert heads and not any(isinstance(m, nn.SyncBatchNorm) for m in heads)  # per rank, as the reference
    assert len(bns) == sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain_method.modules())
    assert method.state_dict().keys() == plain_method.state_dict().keys()  # checkpoints load either way
    assert_same_grads(synced, plain)  # one process: SyncBatchNorm is BatchNorm


def test_sync_bn_refused_for_cpu_process_groups():
    cfg = load_config(None, ["method.name=declip", *SMALL, "train.sync_bn=true"])
    with pytest.raises(SyncBNUnsupported, match="needs CUDA"):
        prepare_method(build_method(cfg), cfg, "cpu", world_size=2)


def test_compile_wires_towers_in_place():
    cfg = load_config(None, ["method.name=clip", *SMALL, "train.compile=true"])
    method = build_method(cfg)
    keys = list(method.state_dict())
    prepare_method(method, cfg, "cpu", world_size=1)
    assert method.clip.visual._compiled_call_impl is not None and method.clip.text._compiled_call_impl is not None
    assert list(method.state_dict()) == keys  # no _orig_mod. prefix: checkpoints unaffected


# ------------------------------------------------------------------------------------ GPU check script
def test_gpu_step_check_smoke_on_cpu():
    spec = importlib.util.spec_from_file_location("gpu_step_check", ROOT / "benchmarks" / "gpu_step_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--device", "cpu", "--preset", "tiny-vit", "--batch-size", "4", "--steps", "1",
                          "--warmup", "0", "--image-size", "32", "--precision", "bf16", "method.queue_size=64",
                          "method.simsiam_proj_dim=32", "method.simsiam_pred_dim=16", "model.text.context_length=16"])
    assert result["precision"] == "fp32" and result["losses_finite"] and result["fps"] > 0
