"""A training step outside logging never waits for the device (issue 10).

On an accelerator the host runs ahead of the device; any read of a device value (``.item()``, ``bool()``,
``int()``, a boolean-mask selection whose size only the device knows) stalls it until the queue drains. The
CPU has no queue, so these tests look for the operations that WOULD wait: a dispatch mode sees every aten op
of the step (forward, backward, optimizer, the trainer's own checks), and ``_local_scalar_dense`` (behind
item/bool/int/float), ``nonzero``, ``masked_select`` and boolean indexing are the ones that read the device.
On a CUDA machine the second test counts real syncs with ``torch.cuda.set_sync_debug_mode``.

Loading the batch is left out (the loader's workers and the collate function work on the CPU by design).
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from declip.train.trainer import Trainer
from helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 6  # logged (and read) only at the last one
SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::is_nonzero"}


class DeviceReads(TorchDispatchMode):
    """Records the ops that would make the host wait for the device, while ``on``."""

    def __init__(self):
        super().__init__()
        self.on, self.seen = False, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        bool_index = name == "aten::index" and any(
            torch.is_tensor(i) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []) if i is not None)
        if self.on and (name in SYNC_OPS or bool_index):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def run_steps(tmp_path, device: str, watcher) -> None:
    """Train ``STEPS`` steps of DeCLIP with all four supervisions (MLM and the NN queue included), gradient
    clipping and the fused optimizer, calling ``watcher.start(step)`` / ``stop()`` around each step's work and
    ``pause()`` / ``resume()`` around its batch loading."""
    cfg = tiny_config(f"train.output_dir={tmp_path / 'run'}", f"train.device={device}", "optim.fused=true",
                      "optim.grad_clip=1.0", f"train.steps={STEPS}", f"train.log_every={STEPS}", "eval.builtin=false")
    trainer = Trainer(cfg)
    assert trainer.device_skip is not None  # the on-device non-finite skip is the path under test
    step_fn, batches_fn = trainer._train_step, trainer._batches

    def batches():
        gen = batches_fn()
        while True:
            watcher.pause()
            batch = next(gen)
            watcher.resume()
            yield batch

    def step(gen):
        watcher.start(trainer.step + 1)
        try:
            return step_fn(gen)
        finally:
            watcher.stop()

    trainer._batches, trainer._train_step = batches, step
    try:
        assert trainer.train()["step"] == STEPS
    finally:
        trainer.close()


class OpWatcher:
    def __init__(self):
        self.mode, self.per_step, self.step = DeviceReads(), {}, 0

    def start(self, step):
        self.step, self.mode.seen = step, []
        self.mode.__enter__()
        self.mode.on = True

    def pause(self):
        self.mode.on = False

    def resume(self):
        self.mode.on = True

    def stop(self):
        self.mode.on = False
        self.mode.__exit__(None, None, None)
        self.per_step[self.step] = list(self.mode.seen)


def test_no_device_read_in_a_step_outside_logging(tmp_path):
    watcher = OpWatcher()
    run_steps(tmp_path, "cpu", watcher)
    assert set(watcher.per_step) == set(range(1, STEPS + 1))
    # step 1 counts the model FLOPs once (a FlopCounterMode pass); no later step may read the device
    assert {s: ops for s, ops in watcher.per_step.items() if s > 1 and ops} == {}


def test_the_watcher_sees_a_device_read(tmp_path):
    """The detector itself: an ``.item()`` and a boolean-mask selection are caught."""
    mode = DeviceReads()
    with mode:
        mode.on = True
        x = torch.randn(8)
        float(x.sum())
        _ = x[x > 0]
    assert "aten::_local_scalar_dense" in mode.seen and "aten::index" in mode.seen


class CudaSyncWatcher:
    """Counts the syncs that ``torch.cuda.set_sync_debug_mode("warn")`` reports, per step."""

    def __init__(self):
        self.per_step, self.step, self.caught, self.log = {}, 0, None, []

    def start(self, step):
        self.step = step
        self.caught = warnings.catch_warnings(record=True)
        self.log = self.caught.__enter__()
        warnings.simplefilter("always")
        self.resume()

    def pause(self):
        torch.cuda.set_sync_debug_mode("default")

    def resume(self):
        torch.cuda.set_sync_debug_mode("warn" if self.step > 1 else "default")

    def stop(self):
        self.pause()
        self.caught.__exit__(None, None, None)
        self.per_step[self.step] = sum("synchroniz" in str(w.message) for w in self.log)


@pytest.mark.accelerator
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.set_sync_debug_mode needs CUDA")
def test_cuda_step_makes_no_sync_outside_logging(tmp_path):
    watcher = CudaSyncWatcher()
    run_steps(tmp_path, "cuda", watcher)
    assert {s: n for s, n in watcher.per_step.items() if s > 1 and n} == {}, watcher.per_step
