"""A training step outside logging never waits for the device (issue 10; declip/train/sync_audit.py says how
the waits are counted). The CPU has no queue to wait on, so the first test counts the operations that WOULD
make the host wait; on a CUDA machine the last one counts real syncs with ``torch.cuda.set_sync_debug_mode``.
"""
from __future__ import annotations

import pytest
import torch

from declip.train.sync_audit import CudaSyncCounter, DeviceReadCounter, _ReadOps, audit_steps
from declip.train.trainer import Trainer
from helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 6  # logged (the only read of the device) at the last one


def audit(tmp_path, device: str, counter, *overrides: str) -> dict[int, list[str]]:
    """DeCLIP with all four supervisions (MLM and the NN queue included), gradient clipping and the fused
    optimizer (its non-finite skip is decided on the device)."""
    cfg = tiny_config(f"train.output_dir={tmp_path / 'run'}", f"train.device={device}", "optim.fused=true",
                      "optim.grad_clip=1.0", f"train.steps={STEPS}", f"train.log_every={STEPS}", "eval.builtin=false",
                      *overrides)
    trainer = Trainer(cfg)
    assert trainer.device_skip is not None
    assert audit_steps(trainer, counter)["step"] == STEPS
    assert set(counter.per_step) == set(range(1, STEPS + 1))
    return counter.per_step


def test_no_device_read_in_a_step_outside_logging(tmp_path):
    per_step = audit(tmp_path, "cpu", DeviceReadCounter())
    # step 1 also counts the model FLOPs (once, for MFU); no step may read the device
    assert {s: ops for s, ops in per_step.items() if ops} == {}


def test_the_unfused_path_reads_every_step(tmp_path):
    """The counter is not blind: without a fused optimizer the non-finite flag is read every step (and the
    default AdamW reads each parameter's step count)."""
    cfg = tiny_config(f"train.output_dir={tmp_path / 'run'}", "optim.fused=false", f"train.steps={STEPS}",
                      "eval.builtin=false", "method.name=clip")
    counter = DeviceReadCounter()
    audit_steps(Trainer(cfg), counter)
    assert all("aten::_local_scalar_dense" in ops for ops in counter.per_step.values())


def test_the_counter_sees_item_and_boolean_masks():
    mode = _ReadOps()
    with mode:
        mode.on = True
        x = torch.randn(8)
        float(x.sum())
        _ = x[x > 0]
    assert "aten::_local_scalar_dense" in mode.seen and "aten::index" in mode.seen


@pytest.mark.accelerator
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.set_sync_debug_mode needs CUDA")
def test_cuda_step_makes_no_sync_outside_logging(tmp_path):
    per_step = audit(tmp_path, "cuda", CudaSyncCounter(), "train.compile=false")
    assert {s: n for s, n in per_step.items() if s > 1 and n} == {}, per_step  # step 1: the one FLOP count
