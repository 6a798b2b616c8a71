"""Held-out built-in evaluation sets, and a writer that puts them on disk as ordinary manifests.

Why on disk: the file-based evaluations (``declip eval --val-manifest/--captions/--train-manifest``) and
CLIP_benchmark need files; writing the built-in sets lets every documented command run on a fresh checkout,
and the manifest route must reproduce the built-in numbers exactly (PNG is lossless), which tests the reader.

Each set draws from its own random stream, disjoint from training (seed 1234) and from each other:

- zero-shot / linear-probe test: :class:`declip.data.builtin.BuiltinZeroShot` (500 scenes, 50 per shape);
- linear-probe train: 500 scenes of another stream, labelled the same way;
- retrieval: 200 scenes with 2 captions each, drawn by the training caption generator (COCO-style: one
  manifest line per caption).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from ..data.builtin import SHAPES, ZEROSHOT_TEMPLATES, BuiltinZeroShot, _rng, caption_for, render_scene
from .wds_layout import write_wds

PROBE_TRAIN_SEED, RETRIEVAL_SEED = 24680, 13579
PROBE_TRAIN_SIZE, RETRIEVAL_SIZE, CAPTIONS_PER_IMAGE = 500, 200, 2


class ShapeImages:
    """Picklable ``load(i)``: scene i of a labelled stream (label = i mod 10), as BuiltinZeroShot draws it."""

    def __init__(self, seed: int):
        self.task = BuiltinZeroShot(seed=seed)

    def __call__(self, i: int):
        return self.task.load(i)[0]


def shape_label(i: int) -> int:
    return i % len(SHAPES)


def retrieval_item(i: int):
    """(image, captions) of retrieval scene ``i``: the captions describe that scene's drawn attributes."""
    rng = _rng(RETRIEVAL_SEED, i)
    image, attrs = render_scene(rng)
    return image, [caption_for(attrs, rng) for _ in range(CAPTIONS_PER_IMAGE)]


class RetrievalImages:
    def __call__(self, i: int):
        return retrieval_item(i)[0]


def _limit(n: int, max_images: int) -> int:
    return min(n, max_images) if max_images else n


def write_builtin(out_dir: str | Path, max_images: int = 0) -> dict[str, Path]:
    """Write the built-in held-out sets under ``out_dir`` (images/ + manifests, see the README); returns the
    paths by role. ``max_images`` caps each set (0 = all)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    paths = {"root": out, "val": out / "val.json", "probe_train": out / "probe_train.json",
             "captions": out / "captions.json", "classnames": out / "classnames.txt",
             "templates": out / "templates.txt", "clip_benchmark": out / "clip_benchmark"}
    _write_labelled(out, paths["val"], "val", ShapeImages(BuiltinZeroShot().seed), _limit(500, max_images))
    _write_labelled(out, paths["probe_train"], "probe", ShapeImages(PROBE_TRAIN_SEED),
                    _limit(PROBE_TRAIN_SIZE, max_images))
    with open(paths["captions"], "w", encoding="utf-8") as f:
        for i in range(_limit(RETRIEVAL_SIZE, max_images)):
            image, captions = retrieval_item(i)
            name = f"images/ret_{i:05d}.png"
            image.save(out / name)
            for c in captions:
                f.write(json.dumps({"filename": name, "caption": c}) + "\n")
    paths["classnames"].write_text("".join(s + "\n" for s in SHAPES), encoding="utf-8")
    paths["templates"].write_text("".join(t + "\n" for t in ZEROSHOT_TEMPLATES), encoding="utf-8")
    _write_clip_benchmark(paths["clip_benchmark"], _limit(500, max_images))
    return paths


def _write_labelled(out: Path, manifest: Path, stem: str, images: ShapeImages, n: int) -> None:
    with open(manifest, "w", encoding="utf-8") as f:
        for i in range(n):
            name = f"images/{stem}_{i:05d}.png"
            images(i).save(out / name)
            label = shape_label(i)
            f.write(json.dumps({"filename": name, "label": label, "label_name": SHAPES[label]}) + "\n")


def _write_clip_benchmark(folder: Path, n: int) -> None:
    """The zero-shot test set in CLIP_benchmark's local WebDataset layout (``--dataset wds/NAME
    --dataset_root FOLDER``, see :mod:`declip.eval.wds_layout`): PNG + class index per scene."""
    images = ShapeImages(BuiltinZeroShot().seed)

    def samples():
        for i in range(n):
            buf = io.BytesIO()
            images(i).save(buf, format="PNG")
            yield "png", buf.getvalue(), shape_label(i)

    write_wds(folder, samples(), classnames=list(SHAPES), templates=ZEROSHOT_TEMPLATES)
