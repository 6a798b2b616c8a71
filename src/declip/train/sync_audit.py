"""Counting the points where a training step makes the host wait for the device (issue 10).

On an accelerator the host runs ahead of the device; a read of a device value (``.item()``, ``bool()``,
``int()``, a boolean-mask selection whose size only the device knows) stalls it until the device's queue
drains, and the next step's kernels are launched late. Two counters, one interface (``start(step)`` /
``pause()`` / ``resume()`` / ``stop()`` around each step, paused while the batch loads):

- :class:`DeviceReadCounter` works on any device, the CPU included: a dispatch mode sees every aten op of the
  step and counts the ones that read a value back (``_local_scalar_dense`` is behind item/bool/int/float;
  ``nonzero``, ``masked_select`` and boolean indexing need the device to say how many). On the CPU nothing
  actually waits, which is why counting the ops is the way to test this without a GPU.
- :class:`CudaSyncCounter` counts the real syncs that ``torch.cuda.set_sync_debug_mode("warn")`` reports.

``audit_steps`` runs a trainer with one of them (tests/test_no_host_sync.py, benchmarks/sync_count.py).
"""
from __future__ import annotations

import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode

READ_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::is_nonzero"}


class _ReadOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.on, self.seen = False, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.on:
            name = func._schema.name
            indices = args[1] if name == "aten::index" and len(args) > 1 else ()
            if name in READ_OPS or any(torch.is_tensor(i) and i.dtype == torch.bool for i in indices):
                self.seen.append(name)
        return func(*args, **(kwargs or {}))


class DeviceReadCounter:
    """Per step: the names of the ops that read a device value (see the module docstring)."""

    def __init__(self):
        self.mode, self.per_step, self.step = _ReadOps(), {}, 0

    def start(self, step: int) -> None:
        self.step, self.mode.seen = step, []
        self.mode.__enter__()
        self.mode.on = True

    def pause(self) -> None:
        self.mode.on = False

    def resume(self) -> None:
        self.mode.on = True

    def stop(self) -> None:
        self.mode.on = False
        self.mode.__exit__(None, None, None)
        self.per_step[self.step] = list(self.mode.seen)


class CudaSyncCounter:
    """Per step: the synchronizing CUDA calls that ``torch.cuda.set_sync_debug_mode("warn")`` reports."""

    def __init__(self):
        self.per_step, self.step, self.caught, self.log = {}, 0, None, []

    def start(self, step: int) -> None:
        self.step = step
        self.caught = warnings.catch_warnings(record=True)
        self.log = self.caught.__enter__()
        warnings.simplefilter("always")
        self.resume()

    def pause(self) -> None:
        torch.cuda.set_sync_debug_mode("default")

    def resume(self) -> None:
        torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> None:
        self.pause()
        self.caught.__exit__(None, None, None)
        self.per_step[self.step] = [str(w.message).splitlines()[0] for w in self.log
                                    if "synchroniz" in str(w.message)]


def audit_steps(trainer, counter) -> dict:
    """Train ``trainer`` to its end with ``counter`` around each step's work (forward, backward, the
    non-finite check, the optimizer step), paused while each batch loads (the loader's workers and collate
    function run on the CPU by design). Log, evaluation and checkpoint work happens outside the step and is
    not counted. Returns the run's summary; the counts are in ``counter.per_step``."""
    step_fn, batches_fn = trainer._train_step, trainer._batches

    def batches():
        gen = batches_fn()
        while True:
            counter.pause()
            batch = next(gen)
            counter.resume()
            yield batch

    def step(gen):
        counter.start(trainer.step + 1)
        try:
            return step_fn(gen)
        finally:
            counter.stop()

    trainer._batches, trainer._train_step = batches, step
    try:
        return trainer.train()
    finally:
        trainer.close()
