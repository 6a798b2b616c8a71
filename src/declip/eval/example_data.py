"""``declip data example DIR``: a small own-data example set from the built-in generated shapes, with the file
names the README's "Train on your own data" section uses, so its commands run as written after a
``pip install`` (no clone needed; tests/test_own_data_path.py runs them on a smaller copy).

DIR/images/*.png, DIR/captions.jsonl (training pairs: filename + caption), DIR/labels.jsonl (held-out scenes:
filename + label + label_name, for zero-shot) and DIR/test_captions.jsonl (held-out scenes, 2 captions each, for
retrieval). Every set draws from its own random stream (the built-in training stream and the built-in held-out
streams of ``declip eval --write-builtin``), so nothing held out is trained on. In the eval layer because the
held-out scenes are the evaluation's built-in sets.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..data.builtin import SHAPES, BuiltinPairs, BuiltinZeroShot
from .builtin_sets import ShapeImages, retrieval_item, shape_label
from .common import progress, show_progress


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_example(out: str | Path, pairs: int = 500, labelled: int = 200, captions: int = 100,
                  show: bool = False) -> dict[str, Path]:
    """Write the example under ``out`` (see the module docstring); returns the paths written by role.
    ``show``: a progress bar on a terminal."""
    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    with show_progress(show):
        bar = progress(total=pairs + labelled + captions, desc="example")
        train, rows, held_out = BuiltinPairs(size=pairs), [], []
        for i in range(pairs):
            image, caption = train.load(i)
            image.save(images / f"train_{i:05d}.png")
            rows.append({"filename": f"train_{i:05d}.png", "caption": caption})
            bar.update(1)
        _write_jsonl(out / "captions.jsonl", rows)
        scenes, rows = ShapeImages(BuiltinZeroShot().seed), []
        for i in range(labelled):
            scenes(i).save(images / f"label_{i:05d}.png")
            label = shape_label(i)
            rows.append({"filename": f"label_{i:05d}.png", "label": label, "label_name": SHAPES[label]})
            bar.update(1)
        _write_jsonl(out / "labels.jsonl", rows)
        for i in range(captions):
            image, texts = retrieval_item(i)
            image.save(images / f"test_{i:05d}.png")
            held_out += [{"filename": f"test_{i:05d}.png", "caption": t} for t in texts]
            bar.update(1)
        _write_jsonl(out / "test_captions.jsonl", held_out)
        bar.close()
    return {"root": out, "images": images, "captions": out / "captions.jsonl", "labels": out / "labels.jsonl",
            "test_captions": out / "test_captions.jsonl"}
