"""Our CLIP training step against open_clip's own, on the same towers, batch and device, in one process.

Both sides get the same architecture (our model config as open_clip's ``CustomTextCLIP`` config, the same
activation), the same fixed batch and AdamW with the same hyper-parameters; ours runs through declip's method
(``methods/clip.py``: gathered InfoNCE, metrics as device tensors, logit-scale clamp), open_clip's through its
``ClipLoss``. The two are timed interleaved (A B A B ...) so that a shared machine's load hits both alike.
Target (issue 10): ours / open_clip's <= 1.00 on the GPU; the CPU ratio is reported too.

    python benchmarks/open_clip_step.py [--preset tiny-vit] [--batch 64] [--steps 20] [--device auto]
        [--precision fp32|bf16] [--out benchmarks/results/open_clip_step.md] [key=value ...]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
from open_clip.loss import ClipLoss
from open_clip.model import CustomTextCLIP

from declip.config import load_config
from declip.data.tokenizer import tokenize
from declip.device import resolve_device
from declip.methods import build_method
from declip.models.towers import open_clip_model_cfg
from declip.train.metrics import synchronize
from declip.train.optim import build_optimizer
from step_time import cpu_name, emit  # benchmarks/ is on the path when a benchmark runs as a script


def synthetic_batch(cfg, batch: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    size = cfg.model.vision.image_size
    images = torch.randn(batch, 1, 3, size, size, generator=g)
    text = tokenize([f"a photo of thing number {i}" for i in range(batch)], cfg.model.text.context_length)
    return {"images": images.to(device), "text": text.to(device)}


def ours(cfg, device):
    torch.manual_seed(0)
    method = build_method(cfg).to(device)
    opt = build_optimizer(method, cfg.optim, fused=device.type == "cuda")

    def step(batch):
        losses, _ = method(batch)
        sum(losses.values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step()
    return step


def theirs(cfg, device):
    torch.manual_seed(0)
    mc = {k: v for k, v in open_clip_model_cfg(cfg.model).items() if k != "custom_text"}  # a factory flag only
    model = CustomTextCLIP(**mc).to(device)
    loss_fn = ClipLoss()
    o = cfg.optim
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                            fused=True if device.type == "cuda" else None)

    def step(batch):
        image_features, text_features, logit_scale = model(batch["images"][:, 0], batch["text"])[:3]
        loss_fn(image_features, text_features, logit_scale).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny-vit")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--out", default="")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    device = resolve_device(a.device)
    cfg = load_config(None, [f"model.preset={a.preset}", "method.name=clip", *a.overrides])
    batch = synthetic_batch(cfg, a.batch, device)
    steps = {"declip CLIP": ours(cfg, device), "open_clip CLIP": theirs(cfg, device)}
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if a.precision == "bf16"
                else contextlib.nullcontext())
    times: dict[str, list[float]] = {k: [] for k in steps}
    with autocast:
        for i in range(a.steps + 3):  # 3 warm-up rounds
            for name, step in steps.items():
                synchronize(device)
                t0 = time.perf_counter()
                step(batch)
                synchronize(device)
                if i >= 3:
                    times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["declip CLIP"] / med["open_clip CLIP"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {os.cpu_count()} cores"
    lines = [f"## CLIP step: declip vs open_clip ({a.preset}, batch {a.batch}, {a.precision}, {device.type})", "",
             f"Command: `python {' '.join(sys.argv)}`", "",
             f"Machine: {name}, torch {torch.__version__}, {torch.get_num_threads()} threads, {a.steps} timed steps "
             "each, interleaved", "", "| step | median (ms) | images/s |", "|---|---|---|"]
    lines += [f"| {k} | {1000 * v:.1f} | {a.batch / v:.1f} |" for k, v in med.items()]
    lines += ["", f"ratio declip / open_clip: {ratio:.3f} (target <= 1.00 on the GPU)", ""]
    emit("\n".join(lines), a.out)


if __name__ == "__main__":
    main()
