"""Model FLOPs utilisation (MFU): how much of the device's peak the training step turns into model arithmetic.

images/s alone cannot say whether a step is slow because the model is big or because the device idles
(host syncs, a starved loader, uncompiled elementwise ops). MFU can: it divides the model's FLOPs per step by
the step time and the device's dense peak. The FLOPs are counted once, on the first optimizer step, by
``torch.utils.flop_counter`` (forward and backward of every micro-batch, at the real batch shapes), with
torch.compile held eager for that one step so the counter sees every matmul. The optimizer update is not
model arithmetic and is left out, as in the PaLM/nanoGPT definition. With activation checkpointing the
recomputed forward is counted too, so the figure is then hardware FLOPs utilisation (HFU).

The peak comes from ``train.peak_tflops`` when set, otherwise from a small table of dense (no sparsity)
per-device peaks by device name and precision. No table entry (a CPU, an unknown accelerator): the log shows
the achieved TFLOP/s and no MFU rather than a guess.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

log = logging.getLogger("declip")

# Dense peak TFLOP/s per device from the vendors' datasheets. fp32 is the plain FP32 rate: declip does not
# enable TF32, so an fp32 run's matmuls cannot use the tensor cores' TF32 path.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},  # SXM; the PCIe card is lower: set train.peak_tflops
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6},
    "A10G": {"bf16": 70.0, "fp16": 70.0, "fp32": 31.2},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
    "V100": {"bf16": 0.0, "fp16": 125.0, "fp32": 15.7},
}


def device_peak_tflops(device: torch.device, precision: str, override: float = 0.0) -> float | None:
    """Peak TFLOP/s of one device at ``precision``: ``override`` if > 0, else the table's entry for the device's
    name (longest matching key), else None."""
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_TFLOPS[key].get(precision) or None
    return None


class StepFlops:
    """Counts the model FLOPs of one optimizer step (the first one this process runs) and turns log intervals
    into achieved TFLOP/s and MFU."""

    def __init__(self, peak_tflops: float | None):
        self.per_step: int | None = None
        self.peak_tflops = peak_tflops

    @contextmanager
    def count(self):
        """Around one step's forward/backward passes: counts them the first time, does nothing after."""
        if self.per_step is not None:
            yield
            return
        from torch.utils.flop_counter import FlopCounterMode

        with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
            yield
        self.per_step = int(counter.get_total_flops())
        log.info("model FLOPs per optimizer step (per device, forward + backward): %.4g%s", self.per_step,
                 f"; MFU against a peak of {self.peak_tflops:g} TFLOP/s" if self.peak_tflops else
                 "; no peak known for this device (set train.peak_tflops to log MFU)")

    def rates(self, seconds_per_step: float) -> dict[str, float]:
        """``tflops`` achieved per device, and ``mfu`` (0-1) when the device's peak is known."""
        if not self.per_step or seconds_per_step <= 0:
            return {}
        achieved = self.per_step / seconds_per_step / 1e12
        out = {"tflops": achieved}
        if self.peak_tflops:
            out["mfu"] = achieved / self.peak_tflops
        return out
