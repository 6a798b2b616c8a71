"""Host waits per training step, outside logging (issue 10): CLIP and DeCLIP, unfused AdamW (the non-finite flag
read on the host every step) vs fused AdamW (the skip decided on the device), through the real trainer.

    python benchmarks/sync_count.py --device cpu  --out benchmarks/results/sync_count.md
    python benchmarks/sync_count.py --device cuda --out benchmarks/results/sync_count_cuda.md   (scripts/gpu_check.sh)

On the CPU it counts the ops that read a device value back (declip.train.sync_audit.DeviceReadCounter: what
WOULD wait on an accelerator); on CUDA the syncs that torch.cuda.set_sync_debug_mode reports. Steps 2..N are
counted (step 1 also counts the model FLOPs, once); the log line is written after the last step, outside it.
"""
from __future__ import annotations

import argparse
import collections
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from declip.config import load_config  # noqa: E402
from declip.train.sync_audit import CudaSyncCounter, DeviceReadCounter, audit_steps  # noqa: E402
from declip.train.trainer import Trainer  # noqa: E402

TINY = ["model.preset=tiny-vit", "model.vision.image_size=32", "model.vision.patch_size=8", "train.batch_size=8",
        "method.queue_size=64", "method.simsiam_proj_dim=32", "method.simsiam_pred_dim=16", "data.builtin_size=256",
        "data.num_workers=0", "train.progress=false", "train.tensorboard=false", "eval.builtin=false",
        "train.ckpt_every=0", "optim.grad_clip=1.0", "train.compile=false"]


def count(device: str, method: str, fused: bool, steps: int) -> tuple[float, collections.Counter]:
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, [*TINY, f"method.name={method}", f"train.device={device}", f"train.steps={steps}",
                                 f"train.log_every={steps}", f"optim.fused={str(fused).lower()}",
                                 f"train.output_dir={out}"])
        counter = CudaSyncCounter() if device == "cuda" else DeviceReadCounter()
        audit_steps(Trainer(cfg), counter)
    counted = [counter.per_step[s] for s in range(2, steps + 1)]
    return sum(map(len, counted)) / len(counted), collections.Counter(op for ops in counted for op in ops)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    what = "synchronizing CUDA calls" if a.device == "cuda" else "device-reading ops"
    name = torch.cuda.get_device_name() if a.device == "cuda" else (platform.processor() or platform.machine())
    lines = [f"## Host waits per training step outside logging ({a.device})", "",
             f"Command: `python benchmarks/sync_count.py --device {a.device} --steps {a.steps}"
             f"{' --out ' + a.out if a.out else ''}`", "",
             f"Machine: {name}, torch {torch.__version__}; tiny ViT towers, batch 8, grad clip 1.0, steps 2..{a.steps} "
             f"counted; counted: {what}", "",
             "| method | AdamW | non-finite skip decided | waits per step | which |", "|---|---|---|---|---|"]
    for method in ("clip", "declip"):
        for fused in (False, True):
            per_step, ops = count(a.device, method, fused, a.steps)
            which = ", ".join(f"{k} x{v / (a.steps - 1):g}" for k, v in ops.most_common()) or "-"
            lines.append(f"| {method} | {'fused' if fused else 'default (foreach)'} | "
                         f"{'on the device' if fused else 'on the host'} | {per_step:g} | {which} |")
            print(lines[-1], flush=True)
    if a.device == "cpu":
        lines += ["", "On the CPU every tensor is a device tensor, so the default AdamW's reads of each parameter's "
                  "step count (a host tensor on CUDA: no wait there) are counted with the non-finite flag; the "
                  "fused path reads nothing. `scripts/gpu_check.sh` runs this on CUDA, where real syncs are counted."]
    text = "\n".join(lines) + "\n"
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
