"""Real ViT-B/32 DeCLIP training steps on one CUDA device: step time, FPS and peak memory.

For a session that has a GPU (none was available where this was written, so its numbers are still to be
measured). It runs the trainer's own pieces (build_method, prepare_method, build_optimizer, autocast, the
gradient scaler and scaled_step, after_step) on a fixed synthetic batch, so it times forward + backward + AdamW
of the real model, not the data pipeline. ``--data manifest`` (or ``builtin``) puts the real input pipeline back
in the loop, as the trainer runs it: loader workers (decode, crops, text) -> pinned uint8 batches ->
DevicePrefetcher (copies the next batch during this step) -> the device stage (jitter, grayscale, blur,
normalise) -> the step; the manifest is ``--images`` generated 500x375 JPEGs unless ``--manifest`` names one.

    python benchmarks/gpu_step_check.py                          # ViT-B/32 DeCLIP, bf16, batch 128, 20 timed steps
    python benchmarks/gpu_step_check.py --precision fp16         # fp16 + GradScaler (skipped steps are reported)
    python benchmarks/gpu_step_check.py --data manifest --images 5000 --steps 100   # loader-fed, all cores
    python benchmarks/gpu_step_check.py --compile --grad-checkpointing
    python benchmarks/gpu_step_check.py --preset rn50 --channels-last
    # CPU smoke test of the script itself (tests/test_precision.py runs this):
    python benchmarks/gpu_step_check.py --device cpu --preset tiny-vit --batch-size 4 --steps 2 --warmup 1 \
        --image-size 32 --precision fp32 method.queue_size=64 method.simsiam_proj_dim=32

FPS = batch / mean step time (one device, so the global batch is the batch); with a loader, a step's time
includes waiting for its batch (``data_wait`` is that share). The reference port's table, for scale: ViT-B/32 DeCLIP at
batch 128 with AMP ran at 85 images/s on one GPU (PyTorch 1.5) and 143 on one Ascend NPU.
Pass criteria for the check: every loss finite, peak memory well under the card's, FPS far above those, and
(scripts/gpu_check.sh) loader-fed FPS >= 90% of synthetic FPS at the same batch.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from declip.config import load_config
from declip.vocab import EOT_ID, MASK_ID, SOT_ID
from declip.methods import build_method
from declip.train.accel import autocast, effective_precision, prepare_method, scaled_step
from declip.train.optim import build_optimizer

# the reference DeCLIP recipe (configs/declip_vitb32_yfcc15m.yaml) without its data paths
RECIPE = ["method.name=declip", "method.queue_size=65536", "method.simsiam_proj_dim=1024",
          "method.simsiam_pred_dim=512", "data.source=builtin", "train.output_dir=/tmp/declip_gpu_check"]


def synthetic_batch(batch: int, image_size: int, context: int, seed: int = 0, views: int = 2) -> dict:
    """``views`` image views (the method's data spec: 2 for DeCLIP, 3 for SLIP), a masked caption with MLM labels
    (15% of its words), the same caption unmasked and an augmented caption."""
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
    images = torch.randn(batch, views, 3, image_size, image_size, generator=g)
    return {"images": images, "text": text, "text_plain": text_aug.clone(), "text_aug": text_aug, "mlm_labels": labels}


def loader_batches(cfg, method, device: torch.device):
    """The trainer's input pipeline: batches on ``device``, augmented and normalised."""
    from declip.data.device_augment import build_device_stage
    from declip.data.loader import DevicePrefetcher, PairDataset, build_train_loader
    from declip.data.sources import build_source

    spec, size = method.data_spec(cfg), cfg.model.vision.image_size
    ds = PairDataset(build_source(cfg.data, image_size=size), spec, size, cfg.train.seed)
    loader = build_train_loader(ds, cfg.train.batch_size, cfg.data.num_workers, 0, 1, cfg.train.seed,
                                pin_memory=device.type == "cuda")
    stage = build_device_stage(spec, size)
    return (stage(b) for b in DevicePrefetcher(iter(loader), device))


def make_manifest(n: int) -> Path:
    """n generated 500x375 JPEGs + manifest (benchmarks/loader_throughput.py's generator, all cores)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from loader_throughput import generate

    folder = Path(tempfile.mkdtemp(prefix="declip_gpu_check_jpegs_"))
    t0 = time.perf_counter()
    manifest = generate(folder, n, processes=os.cpu_count() or 1)
    print(f"generated {n} 500x375 JPEGs in {folder} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return manifest


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
    p.add_argument("--data", default="synthetic", choices=["synthetic", "manifest", "builtin"])
    p.add_argument("--manifest", default="", help="--data manifest: a JSON-lines manifest (default: generate)")
    p.add_argument("--images", type=int, default=5000, help="--data manifest: JPEGs to generate")
    p.add_argument("--num-workers", type=int, default=-1, help="loader workers; -1 = all host cores")
    p.add_argument("--json", default="", help="also write the result here")
    p.add_argument("overrides", nargs="*", help="extra config key=value, e.g. method.queue_size=4096")
    args = p.parse_intermixed_args(argv)  # key=value overrides may follow flags (gpu_check.sh appends them)
    workers = (os.cpu_count() or 1) if args.num_workers < 0 else args.num_workers

    overrides = [*RECIPE, f"model.preset={args.preset}", f"train.batch_size={args.batch_size}",
                 f"train.precision={args.precision}", f"train.compile={str(args.compile).lower()}",
                 f"train.grad_checkpointing={str(args.grad_checkpointing).lower()}",
                 f"train.channels_last={str(args.channels_last).lower()}", f"data.num_workers={workers}"]
    if args.image_size:
        overrides.append(f"model.vision.image_size={args.image_size}")
    manifest = None
    if args.data == "manifest":
        manifest = Path(args.manifest) if args.manifest else make_manifest(args.images)
        overrides += ["data.source=manifest", f"data.path={manifest}", f"data.root={manifest.parent}"]
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
        fixed = synthetic_batch(args.batch_size, cfg.model.vision.image_size, cfg.model.text.context_length,
                                views=method.data_spec(cfg).n_views)
        fixed = {k: v.to(device) for k, v in fixed.items()}
        batches = iter(lambda: fixed, None)
    else:
        batches = loader_batches(cfg, method, device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times, waits, losses, overflows = [], [], [], 0
    # with a loader, the first batches come from buffers every worker filled at once while the model warmed up:
    # skip two per worker so the timed steps see the loader's steady rate
    warmup = args.warmup if args.data == "synthetic" else max(args.warmup, 2 * workers)
    for i in range(warmup + args.steps):
        if i == warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync()
        t0 = time.perf_counter()
        batch = next(batches)
        sync()
        wait = time.perf_counter() - t0  # the batch and its device stage: what the step waits for
        with autocast(precision, device.type):
            parts, _ = method(batch)
        loss = sum(parts.values())
        scaler.scale(loss).backward()
        overflows += not scaled_step(scaler, optimizer, method.parameters(), cfg.optim.grad_clip)
        optimizer.zero_grad(set_to_none=True)
        method.after_step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            waits.append(wait)
            losses.append(float(loss.detach()))

    if args.data != "synthetic":
        del batches  # ends the loader's workers
        if manifest is not None and not args.manifest:
            shutil.rmtree(manifest.parent, ignore_errors=True)  # the generated JPEGs
    mean = statistics.mean(times)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "preset": args.preset, "precision": precision, "batch_size": args.batch_size, "data": args.data,
        "num_workers": workers if args.data != "synthetic" else 0, "manifest": str(manifest) if manifest else None,
        "warmup_steps": warmup, "timed_steps": args.steps, "data_wait": sum(waits) / sum(times),
        "compile": args.compile, "grad_checkpointing": args.grad_checkpointing, "channels_last": args.channels_last,
        "step_time_s": {"mean": mean, "median": statistics.median(times), "min": min(times), "max": max(times)},
        "fps": args.batch_size / mean,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "losses_finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses)),
        "first_last_loss": [losses[0], losses[-1]], "fp16_overflow_steps": overflows,
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=1))
    print(f"{result['device']}: {args.preset} {cfg.method.name} {precision} batch {args.batch_size} {args.data} "
          f"data: step {1000 * mean:.1f} ms (median {1000 * result['step_time_s']['median']:.1f}), FPS {result['fps']:.1f}, "
          f"data wait {100 * result['data_wait']:.0f}%, peak memory {result['peak_memory_gib'] or 0:.2f} GiB, "
          f"losses finite: {result['losses_finite']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
