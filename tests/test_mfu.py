"""MFU logging (train/mfu.py): the FLOPs counted are the model's, counted once, and the log carries them."""
from __future__ import annotations

import pytest
import torch

from declip.train import mfu
from declip.train.mfu import StepFlops, device_peak_tflops
from declip.train.trainer import train
from helpers import metrics, tiny_config


def test_counts_forward_and_backward_matmul_flops_once():
    b, i, o = 8, 16, 4
    w = torch.randn(i, o, requires_grad=True)
    x = torch.randn(b, i, requires_grad=True)
    flops = StepFlops(peak_tflops=None)
    with flops.count():
        (x @ w).sum().backward()
    # forward 2*b*i*o; backward: grad of x (2*b*o*i) and of w (2*i*b*o)
    assert flops.per_step == 6 * b * i * o
    with flops.count():  # later steps are not counted again (and cost nothing)
        (x @ w @ w.t()).sum().backward()
    assert flops.per_step == 6 * b * i * o


def test_rates_need_a_peak_for_mfu():
    flops = StepFlops(peak_tflops=None)
    assert flops.rates(0.5) == {}  # nothing counted yet
    flops.per_step = int(2e12)
    assert flops.rates(0.5) == {"tflops": pytest.approx(4.0)}
    flops.peak_tflops = 8.0
    assert flops.rates(0.5) == {"tflops": pytest.approx(4.0), "mfu": pytest.approx(0.5)}


def test_peak_from_override_table_or_nothing(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert device_peak_tflops(cpu, "fp32") is None
    assert device_peak_tflops(cpu, "fp32", override=3.5) == 3.5
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _d=None: "NVIDIA H200")
    assert device_peak_tflops(cuda, "bf16") == mfu.PEAK_TFLOPS["H200"]["bf16"]
    assert device_peak_tflops(cuda, "fp32") == mfu.PEAK_TFLOPS["H200"]["fp32"]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _d=None: "Some Future GPU")
    assert device_peak_tflops(cuda, "bf16") is None


def test_training_log_carries_tflops_and_mfu(tmp_path):
    train(tiny_config("method.name=clip", "train.steps=2", "train.peak_tflops=0.5",
                      f"train.output_dir={tmp_path}"))
    records = metrics(tmp_path)
    assert records and all(r["tflops"] > 0 for r in records)
    for r in records:
        assert r["mfu"] == pytest.approx(r["tflops"] / 0.5)
        assert r["step_time_s"] > 0
    assert "model FLOPs per optimizer step" in (tmp_path / "train.log").read_text()
