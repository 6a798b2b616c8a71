"""Data-loader throughput of the DeCLIP two-view pipeline against a naive one, per worker.

Both read a JSON-lines manifest of generated ImageNet-sized JPEGs (500x375, quality 90) and emit, per sample,
two 224 px MoCo-v2 views (random resized crop 0.2-1, colour jitter p=0.8, grayscale p=0.2, blur p=0.5, flip)
plus the text work DeCLIP needs (BPE, EDA-augmented caption, MLM masking):

  declip       PairDataset over ManifestSource: one decode (draft mode when the image is large enough),
               two augmentation draws (torchvision v2 on PIL, MoCo's PIL Gaussian blur), per-sample seeding
  naive        per view a fresh PIL decode + torchvision.transforms (v1) with transforms.GaussianBlur(23)
  naive+PILblur  the same as naive but with the PIL blur: isolates what decoding once buys

Images/s are source images (each giving 2 views) per worker process: num_workers=1 (a worker process feeding
the main one, as in training) and num_workers=0 (in the main process, torch.set_num_threads(1)). The best of
3 interleaved repeats is reported, since the CPUs are shared with other jobs.

    .venv/bin/python benchmarks/loader_throughput.py [--images 300] [--samples 192]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import DataLoader, Dataset

from declip.data.loader import DataSpec, PairDataset, build_train_loader
from declip.data.manifest import ManifestSource
from declip.data.text import TextPipeline, TextSpec
from declip.data.views import IMAGENET_MEAN, IMAGENET_STD

SIZE = 224
TEXT = TextSpec(eda=True, mlm=True)
WORDS = "a photo of the old red bridge over river at sunset with trees and people walking dog in park".split()


def generate(folder: Path, n: int) -> Path:
    """n photo-like 500x375 JPEGs (smooth colour field + shapes + grain) and their manifest."""
    rng = np.random.default_rng(0)
    pyr = random.Random(0)
    with open(folder / "manifest.jsonl", "w") as f:
        for i in range(n):
            base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
            d = ImageDraw.Draw(base)
            for _ in range(6):
                x, y, r = pyr.randrange(500), pyr.randrange(375), pyr.randint(10, 80)
                d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(pyr.randrange(256) for _ in range(3)))
            arr = np.asarray(base).astype(np.int16) + rng.integers(-12, 13, (375, 500, 3))
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
            caption = " ".join(pyr.choice(WORDS) for _ in range(pyr.randint(6, 16)))
            f.write(json.dumps({"filename": f"{i:05d}.jpg", "caption": caption}) + "\n")
    return folder / "manifest.jsonl"


class MocoPILBlur:
    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


def naive_view(pil_blur: bool) -> T.Compose:
    blur = MocoPILBlur() if pil_blur else T.GaussianBlur(23, sigma=(0.1, 2.0))
    return T.Compose([
        T.RandomResizedCrop(SIZE, scale=(0.2, 1.0)), T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2), T.RandomApply([blur], p=0.5), T.RandomHorizontalFlip(), T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class NaivePairs(Dataset):
    """The straightforward version: manifest parsed into a list up front, two decodes, v1 transforms."""

    def __init__(self, manifest: Path, pil_blur: bool):
        self.root = manifest.parent
        self.records = [json.loads(line) for line in open(manifest)]
        self.view, self.text = naive_view(pil_blur), TextPipeline(TEXT)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        rec = self.records[i]
        views = [self.view(Image.open(self.root / rec["filename"]).convert("RGB")) for _ in range(2)]
        return {"images": torch.stack(views), **self.text(rec["caption"], random.Random(i))}


def loader_for(kind: str, manifest: Path, workers: int, batch: int) -> DataLoader:
    if kind == "declip":
        ds = PairDataset(ManifestSource(manifest, manifest.parent, image_size=SIZE),
                         DataSpec(n_views=2, augment="mocov2", text=TEXT), SIZE, seed=0)
        return build_train_loader(ds, batch, workers, 0, 1, seed=0)
    ds = NaivePairs(manifest, pil_blur=kind == "naive+PILblur")
    return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


def images_per_s(kind: str, manifest: Path, workers: int, samples: int, batch: int = 16) -> float:
    loader = loader_for(kind, manifest, workers, batch)
    it = iter(loader)
    next(it)  # worker start-up and first-batch latency are not throughput
    t0 = time.perf_counter()
    n = 0
    while n < samples:
        batch_ = next(it, None)
        if batch_ is None:  # an ordinary DataLoader ends its epoch; start the next
            it = iter(loader)
            continue
        n += batch_["images"].shape[0]
    rate = n / (time.perf_counter() - t0)
    del it, loader
    return rate


def component_ms(manifest: Path) -> dict[str, float]:
    """Single-threaded cost of the parts, in ms (mean of 60 calls: the random ops make medians misleading)."""
    from torchvision.transforms import v2

    from declip.data.decode import load_image
    from declip.data.views import mocov2_transform

    root = manifest.parent
    paths = sorted(root.glob("*.jpg"))[:60]
    img = Image.open(paths[0]).convert("RGB")
    crop = img.resize((SIZE, SIZE))
    big = root / "big.jpeg"  # a large photo, where draft mode matters
    Image.open(paths[0]).resize((2000, 1500), Image.BICUBIC).save(big, quality=90)
    ours, naive = mocov2_transform(SIZE), naive_view(False)
    text = TextPipeline(TEXT)
    to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    rrc = v2.RandomResizedCrop(SIZE, scale=(0.2, 1.0), antialias=True)

    def mean(fn):
        fn(0)
        t0 = time.perf_counter()
        for k in range(60):
            fn(k)
        return (time.perf_counter() - t0) / 60 * 1000

    return {
        "decode 500x375 (PIL, full size)": mean(lambda k: Image.open(paths[k]).convert("RGB")),
        "decode 500x375 (declip.data.decode, draft for 224)": mean(lambda k: load_image(paths[k], SIZE)),
        "decode 2000x1500 (PIL, full size)": mean(lambda k: Image.open(big).convert("RGB")),
        "decode 2000x1500 (declip.data.decode, draft for 224: 1/2 scale)": mean(lambda k: load_image(big, SIZE)),
        "one view, declip (v2 + PIL blur)": mean(lambda k: ours(img)),
        "one view, naive (v1 + GaussianBlur(23))": mean(lambda k: naive(img)),
        "  random resized crop to 224": mean(lambda k: rrc(img)),
        "  hue jitter (PIL, part of colour jitter)": mean(lambda k: v2.functional.adjust_hue(crop, 0.05)),
        "  blur, torchvision GaussianBlur(23) on a 224 px PIL image": mean(
            lambda k: T.GaussianBlur(23, sigma=(0.1, 2.0))(crop)),
        "  blur, PIL GaussianBlur (MoCo v2 / DeCLIP reference)": mean(lambda k: MocoPILBlur()(crop)),
        "  to tensor + normalise": mean(lambda k: to_tensor(crop)),
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
    kinds = ("declip", "naive", "naive+PILblur")
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
    best = {k: max(v) for k, v in rates.items()}
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    rows = "\n".join(
        f"| {kind} | {best[kind, 1]:.1f} | {best[kind, 0]:.1f} | {best[kind, 1] / best['naive', 1]:.2f}x | "
        f"{best[kind, 0] / best['naive', 0]:.2f}x | {', '.join(f'{r:.0f}' for r in rates[kind, 1])} / "
        f"{', '.join(f'{r:.0f}' for r in rates[kind, 0])} |" for kind in kinds)
    part_rows = "\n".join(f"| {k} | {v:.2f} |" for k, v in parts.items())
    load = os.getloadavg()
    report = f"""# Loader throughput: DeCLIP two-view pipeline vs naive

Command: `.venv/bin/python benchmarks/loader_throughput.py --images {args.images} --samples {args.samples}`
Machine: {os.cpu_count()} CPUs ({cpu}), torch {torch.__version__}, Pillow {Image.__version__}; the CPUs were shared
with other jobs (load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}), so absolute numbers are noisy;
each setting was measured {args.repeats} times, interleaved, and the best is reported.
Data: {args.images} generated 500x375 JPEGs (quality 90), 224 px views, batch 16; images/s = source images
(each giving 2 augmented views + caption, EDA caption and MLM labels) per worker process.

| pipeline | num_workers=1 (img/s) | num_workers=0 (img/s) | vs naive (w=1) | vs naive (w=0) | all runs w=1 / w=0 |
|---|---|---|---|---|---|
{rows}

Single-threaded cost of the parts (mean ms per call):

| part | ms |
|---|---|
{part_rows}

Reading: the DeCLIP two-view pipeline is {best['declip', 1] / best['naive', 1]:.1f}x (one worker) and
{best['declip', 0] / best['naive', 0]:.1f}x (in-process) the naive one, so the >= 2x target is met, but almost all of
it comes from the blur: torchvision's GaussianBlur(23) on a PIL image converts to a tensor and runs a 23-tap float
convolution, while MoCo v2 and the DeCLIP reference use PIL's GaussianBlur (see the parts table); the package's
mocov2 views (declip.data.views) now use the PIL blur. Decoding once instead of twice adds little at this size
(declip vs naive+PILblur: {best['declip', 1] / best['naive+PILblur', 1]:.2f}x / {best['declip', 0] / best['naive+PILblur', 0]:.2f}x, within the noise of a shared machine),
because a 500x375 decode is small next to one view's augmentations. Draft mode does nothing at 500x375 for 224 px
views (neither side reaches 2 x 448); it pays for large photos (the 2000x1500 rows). What limits the pipeline
now is the per-view augmentation work on PIL images (hue jitter, crop-resize, float conversion + normalisation),
done twice per sample; the text work is minor. Further gains would need moving normalisation (or all colour
augmentation) to the GPU, which changes the batch contract (uint8 images), so it is left out here.
"""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
