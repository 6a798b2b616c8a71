"""Data-loader throughput per worker: the old all-on-the-CPU two-view pipeline vs the split one (issue 9).

Both read a JSON-lines manifest of generated photo-like JPEGs (500x375, quality 90) through the same
PairDataset (one decode per sample, per-sample seeding, the text work DeCLIP needs: BPE, EDA, MLM masking)
and emit two 224 px MoCo-v2 views per sample:

  old   the reference CPU pipeline (declip.data.views.mocov2_transform x 2): crop, colour jitter, grayscale,
        PIL blur, flip, float conversion and normalisation, all in the worker
  new   the worker stage of the split pipeline (declip.data.views.CropViews): two crops + flip as uint8,
        plus the per-view augmentation parameters; the rest runs batched on the training device

Images/s are source images (each giving 2 views) per worker process: num_workers=1 (a worker process feeding
the main one, as in training) and num_workers=0 (in the main process); torch.set_num_threads(1) throughout.
The best of --repeats interleaved repeats is reported, since the CPUs may be shared with other jobs.

The device stage (declip.data.device_augment.DeviceStage: jitter, grayscale, blur, normalise) is timed
separately on the CPU, one thread, on the loader's own batches: on a GPU it is a few batched kernels.

    python benchmarks/loader_throughput.py [--images 300] [--samples 192] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from declip.data.device_augment import build_device_stage
from declip.data.loader import DataSpec, PairDataset, build_train_loader
from declip.data.manifest import ManifestSource
from declip.data.text import TextPipeline, TextSpec
from declip.data.views import build_reference_views

SIZE = 224
TEXT = TextSpec(eda=True, mlm=True)
SPEC = DataSpec(n_views=2, augment="mocov2", text=TEXT)
WORDS = "a photo of the old red bridge over river at sunset with trees and people walking dog in park".split()


def _make_image(args: tuple[Path, int]) -> str:
    folder, i = args
    rng = np.random.default_rng(i)
    pyr = random.Random(i)
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
    d = ImageDraw.Draw(base)
    for _ in range(6):
        x, y, r = pyr.randrange(500), pyr.randrange(375), pyr.randint(10, 80)
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(pyr.randrange(256) for _ in range(3)))
    arr = np.asarray(base).astype(np.int16) + rng.integers(-12, 13, (375, 500, 3))
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    caption = " ".join(pyr.choice(WORDS) for _ in range(pyr.randint(6, 16)))
    return json.dumps({"filename": f"{i:05d}.jpg", "caption": caption})


def generate(folder: Path, n: int, processes: int = 1) -> Path:
    """n photo-like 500x375 JPEGs (smooth colour field + shapes + grain) and their manifest; image i depends
    only on i, so any process count writes the same files."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder, i) for i in range(n)]
    if processes > 1:
        with Pool(processes) as pool:
            lines = pool.map(_make_image, jobs, chunksize=64)
    else:
        lines = [_make_image(j) for j in jobs]
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "manifest.jsonl"


def dataset(kind: str, manifest: Path) -> PairDataset:
    source = ManifestSource(manifest, manifest.parent, image_size=SIZE)
    views = build_reference_views("mocov2", SIZE, 2) if kind == "old" else None
    return PairDataset(source, SPEC, SIZE, seed=0, views=views)


def images_per_s(kind: str, manifest: Path, workers: int, samples: int, batch: int = 16) -> float:
    return loader_rate(build_train_loader(dataset(kind, manifest), batch, workers, 0, 1, seed=0), samples)


def loader_rate(loader, samples: int) -> float:
    """Images/s a loader yields over ``samples`` images after its first batch (worker start-up and first-batch
    latency are not throughput); the loader's workers end with it."""
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    n = 0
    while n < samples:
        n += next(it)["images"].shape[0]
    rate = n / (time.perf_counter() - t0)
    del it, loader
    return rate


def device_stage_ms(manifest: Path, batch: int = 16, repeats: int = 5) -> dict[str, float]:
    """The device stage on the CPU (one thread): ms per batch of ``batch`` samples x 2 views, best of repeats."""
    loader = build_train_loader(dataset("new", manifest), batch, 0, 0, 1, seed=0)
    it = iter(loader)
    batches = [next(it) for _ in range(repeats)]
    stage = build_device_stage(SPEC, SIZE)
    normalise_only = build_device_stage(DataSpec(n_views=2, augment="clip"), SIZE)
    stage(batches[0])  # warm-up

    def best(fn):
        times = []
        for b in batches:
            t0 = time.perf_counter()
            fn(b)
            times.append(time.perf_counter() - t0)
        return 1000 * min(times)

    return {"augment + normalise": best(stage), "normalise only (CLIP baseline / no augmentation)":
            best(normalise_only)}


def component_ms(manifest: Path) -> dict[str, float]:
    """Single-threaded cost of the parts, in ms (mean of 60 calls: the random ops make medians misleading)."""
    from declip.data.decode import load_image
    from declip.data.views import CropViews, ViewAugment, mocov2_transform

    paths = sorted(manifest.parent.glob("*.jpg"))[:60]
    img = load_image(paths[0], SIZE)
    old_view, new_views = mocov2_transform(SIZE), CropViews(SIZE, 2, (0.2, 1.0), ViewAugment())
    text = TextPipeline(TEXT)

    def mean(fn):
        fn(0)
        t0 = time.perf_counter()
        for k in range(60):
            fn(k)
        return (time.perf_counter() - t0) / 60 * 1000

    return {
        "decode 500x375 (declip.data.decode)": mean(lambda k: load_image(paths[k % len(paths)], SIZE)),
        "old: two views (crop, jitter, grayscale, PIL blur, flip, normalise)": mean(
            lambda k: [old_view(img) for _ in range(2)]),
        "new: two views (crop + flip as uint8, parameters)": mean(lambda k: new_views(img)),
        "text: BPE + EDA + MLM": mean(lambda k: text("a photo of the old red bridge over the river at sunset",
                                                     random.Random(k))),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--samples", type=int, default=192, help="samples timed per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "loader_throughput.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    kinds = ("old", "new")
    with tempfile.TemporaryDirectory(prefix="declip_loader_bench_") as tmp:
        manifest = generate(Path(tmp), args.images)
        parts = component_ms(manifest)
        rates: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.repeats):
            for workers in (1, 0):
                for kind in kinds:
                    rates.setdefault((kind, workers), []).append(
                        images_per_s(kind, manifest, workers, args.samples))
                    print(kind, workers, f"{rates[kind, workers][-1]:.1f} img/s", flush=True)
        stage = device_stage_ms(manifest)
    best = {k: max(v) for k, v in rates.items()}
    speedup = {w: best["new", w] / best["old", w] for w in (1, 0)}
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    rows = "\n".join(
        f"| {kind} | {best[kind, 1]:.1f} | {best[kind, 0]:.1f} | {1000 / best[kind, 1]:.1f} | "
        f"{best[kind, 1] / best['old', 1]:.2f}x | {best[kind, 0] / best['old', 0]:.2f}x | "
        f"{', '.join(f'{r:.0f}' for r in rates[kind, 1])} / {', '.join(f'{r:.0f}' for r in rates[kind, 0])} |"
        for kind in kinds)
    part_rows = "\n".join(f"| {k} | {v:.2f} |" for k, v in parts.items())
    stage_rows = "\n".join(f"| {k} | {v:.1f} | {v / 32:.2f} |" for k, v in stage.items())
    load = os.getloadavg()
    verdict = "met" if speedup[1] >= 3 else "NOT met"
    report = f"""# Loader throughput: old CPU two-view pipeline vs the split pipeline's worker stage

Command: `benchmarks/loader_throughput.py --images {args.images} --samples {args.samples} --repeats {args.repeats}`
Machine: {os.cpu_count()} CPUs ({cpu}), torch {torch.__version__}, Pillow {Image.__version__}; the CPUs were shared
with other jobs (load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}), so absolute numbers are noisy;
each setting was measured {args.repeats} times, interleaved, and the best is reported.
Data: {args.images} generated 500x375 JPEGs (quality 90), two 224 px views per sample, batch 16, one torch
thread; images/s = source images (each giving 2 views + caption, EDA caption and MLM labels) per worker;
w = num_workers (1: a worker process feeding the main one; 0: in the main process).

| worker stage | w=1 (img/s) | w=0 (img/s) | ms/sample (w=1) | vs old (w=1) | vs old (w=0) | all runs w=1 / w=0 |
|---|---|---|---|---|---|---|
{rows}

Target (issue 9): the worker stage costs <= 1/3 of the old pipeline per sample (>= 3x images/s per worker):
{speedup[1]:.2f}x with a worker process, {speedup[0]:.2f}x in-process: **{verdict}**.

Device stage, timed here on the CPU (one thread; on a GPU it runs as batched kernels), per batch of 16 samples
x 2 views at 224 px, best of 5 batches:

| device stage | ms / batch | ms / view |
|---|---|---|
{stage_rows}

Single-threaded cost of the worker stage's parts (mean ms per call):

| part | ms |
|---|---|
{part_rows}

Reading: the worker now decodes, crops twice (torch's uint8 antialiased resize, within 1/255 of the old PIL
resize) and runs the text pipeline; the colour jitter (hue above all), blur and float conversion that dominated
the old per-view cost moved to the device stage. On a CPU-only run the device stage still costs CPU time
(the table above; batched float ops, less than the old per-view PIL work, but in the training process instead
of spread over the workers), so the split pays off where a GPU trains; on the CPU it is one code path.
What is left in the worker is decode, two resizes and the text work (BPE + EDA + MLM), each about a third.
Both rows include the per-sample seeding change of this revision (the CPU generator only: torch.manual_seed
also queued a lazy CUDA reseed, recording a traceback, ~1 ms per sample), so the ratio is the view split alone.

GPU check (scripts/gpu_check.sh: loader-fed ViT-B/32 DeCLIP bf16 on >= 5,000 generated 500x375 JPEGs, all host
cores as workers, vs synthetic batches at the same batch size; target >= 90%): **not run yet** — no GPU was
available to this session. No GPU numbers are reported here.
"""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
