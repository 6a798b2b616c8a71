"""Real ViT-B/32 DeCLIP training steps on one CUDA device: step time, FPS and peak memory.

For a session that has a GPU (none was available where this was written, so its numbers are still to be
measured). It runs the trainer's own pieces (build_method, prepare_method, build_optimizer, autocast, the
gradient scaler and scaled_step, after_step) on a fixed batch, so it times forward + backward + AdamW of the
real model, not the data pipeline (``--data builtin`` puts the real loader back in the loop).

    python benchmarks/gpu_step_check.py                          # ViT-B/32 DeCLIP, bf16, batch 128, 20 timed steps
    python benchmarks/gpu_step_check.py --precision fp16         # fp16 + GradScaler (skipped steps are reported)
    python benchmarks/gpu_step_check.py --compile --grad-checkpointing
    python benchmarks/gpu_step_check.py --preset rn50 --channels-last
    # CPU smoke test of the script itself (tests/test_precision.py runs this):
    python benchmarks/gpu_step_check.py --device cpu --preset tiny-vit --batch-size 4 --steps 2 --warmup 1 \
        --image-size 32 --precision fp32 method.queue_size=64 method.simsiam_proj_dim=32

FPS = batch / mean step time (one device, so the global batch is the batch). The reference port's table, for scale:
ViT-B/32 DeCLIP at batch 128 with AMP ran at 85 images/s on one GPU (PyTorch 1.5) and 143 on one Ascend NPU.
Pass criteria for the check: every loss finite, peak memory well under the card's, and FPS far above those.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from declip.config import load_config
from declip.vocab import EOT_ID, MASK_ID, SOT_ID
from declip.methods import build_method
from declip.train.accel import autocast, effective_precision, prepare_method, scaled_step
from declip.train.optim import build_optimizer

# the reference DeCLIP recipe (configs/declip_vitb32_yfcc15m.yaml) without its data paths
RECIPE = ["method.name=declip", "method.queue_size=65536", "method.simsiam_proj_dim=1024",
          "method.simsiam_pred_dim=512", "data.source=builtin", "train.output_dir=/tmp/declip_gpu_check"]


def synthetic_batch(batch: int, image_size: int, context: int, seed: int = 0) -> dict:
    """Two image views, a masked caption with MLM labels (15% of its words) and an augmented caption."""
    g = torch.Generator().manual_seed(seed)
    words = context // 2  # half-full captions, like the YFCC titles + descriptions
    text = torch.zeros(batch, context, dtype=torch.long)
    text[:, 0], text[:, words + 1] = SOT_ID, EOT_ID
    text[:, 1:words + 1] = torch.randint(1, SOT_ID, (batch, words), generator=g)
    text_aug = text.clone()
    labels = torch.full_like(text, -100)
    masked = torch.zeros_like(text, dtype=torch.bool)
    masked[:, 1:words + 1] = torch.rand(batch, words, generator=g) < 0.15
    labels[masked], text[masked] = text[masked], MASK_ID
    images = torch.randn(batch, 2, 3, image_size, image_size, generator=g)
    return {"images": images, "text": text, "text_aug": text_aug, "mlm_labels": labels}


def builtin_batches(cfg, method):
    from declip.data.loader import PairDataset, build_train_loader
    from declip.data.sources import build_source

    ds = PairDataset(build_source(cfg.data), method.data_spec(cfg), cfg.model.vision.image_size, cfg.train.seed)
    return iter(build_train_loader(ds, cfg.train.batch_size, cfg.data.num_workers, 0, 1, cfg.train.seed,
                                   pin_memory=True))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="vit-b-32")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN autotune, compile, scaler)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--image-size", type=int, default=0, help="0 = the preset's")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--data", default="synthetic", choices=["synthetic", "builtin"])
    p.add_argument("--num-workers", type=int, default=8)
    p.add_argument("--json", default="", help="also write the result here")
    p.add_argument("overrides", nargs="*", help="extra config key=value, e.g. method.queue_size=4096")
    args = p.parse_args(argv)

    overrides = [*RECIPE, f"model.preset={args.preset}", f"train.batch_size={args.batch_size}",
                 f"train.precision={args.precision}", f"train.compile={str(args.compile).lower()}",
                 f"train.grad_checkpointing={str(args.grad_checkpointing).lower()}",
                 f"train.channels_last={str(args.channels_last).lower()}", f"data.num_workers={args.num_workers}"]
    if args.image_size:
        overrides.append(f"model.vision.image_size={args.image_size}")
    overrides += args.overrides
    cfg = load_config(None, overrides)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: this check needs a GPU (use --device cpu for a smoke test)")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    precision = effective_precision(args.precision, device.type)

    torch.manual_seed(0)
    method = build_method(cfg).to(device)
    prepare_method(method, cfg, device.type, world_size=1)
    optimizer = build_optimizer(method, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    method.train()
    if args.data == "synthetic":
        fixed = synthetic_batch(args.batch_size, cfg.model.vision.image_size, cfg.model.text.context_length)
        fixed = {k: v.to(device) for k, v in fixed.items()}
        batches = iter(lambda: fixed, None)
    else:
        loader = builtin_batches(cfg, method)
        batches = ({k: v.to(device, non_blocking=True) for k, v in b.items() if torch.is_tensor(v)} for b in loader)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times, losses, overflows = [], [], 0
    for i in range(args.warmup + args.steps):
        if i == args.warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync()
        t0 = time.perf_counter()
        batch = next(batches)
        with autocast(precision, device.type):
            parts, _ = method(batch)
        loss = sum(parts.values())
        scaler.scale(loss).backward()
        overflows += not scaled_step(scaler, optimizer, method.parameters(), cfg.optim.grad_clip)
        optimizer.zero_grad(set_to_none=True)
        method.after_step()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))

    mean = statistics.mean(times)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "preset": args.preset, "precision": precision, "batch_size": args.batch_size, "data": args.data,
        "compile": args.compile, "grad_checkpointing": args.grad_checkpointing, "channels_last": args.channels_last,
        "step_time_s": {"mean": mean, "median": statistics.median(times), "min": min(times), "max": max(times)},
        "fps": args.batch_size / mean,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "losses_finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses)),
        "first_last_loss": [losses[0], losses[-1]], "fp16_overflow_steps": overflows,
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=1))
    print(f"{result['device']}: {args.preset} DeCLIP {precision} batch {args.batch_size}: step "
          f"{1000 * mean:.1f} ms (median {1000 * result['step_time_s']['median']:.1f}), FPS {result['fps']:.1f}, "
          f"peak memory {result['peak_memory_gib'] or 0:.2f} GiB, losses finite: {result['losses_finite']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
