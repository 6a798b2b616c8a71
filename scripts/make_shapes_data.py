"""Write a small own-data example from the built-in generated shapes: the files the README's "Train on your own
data" section uses, so its commands run as written on a fresh checkout (and tests/test_own_data_path.py runs
them on a smaller copy).

    python scripts/make_shapes_data.py OUT [--pairs 500] [--labelled 200] [--captions 100]

OUT/images/*.png, OUT/captions.jsonl (training pairs: filename + caption), OUT/labels.jsonl (held-out scenes:
filename + label + label_name, for zero-shot) and OUT/test_captions.jsonl (held-out scenes, 2 captions each, for
retrieval). Every set draws from its own random stream (the built-in training stream and the built-in held-out
streams of ``declip eval --write-builtin``), so nothing held out is trained on.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from declip.data.builtin import SHAPES, BuiltinPairs, BuiltinZeroShot
from declip.eval.builtin_sets import ShapeImages, retrieval_item, shape_label


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_shapes_data(out: str | Path, pairs: int = 500, labelled: int = 200, captions: int = 100) -> Path:
    """Write the example under ``out`` (see the module docstring); returns ``out``."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    train, rows, held_out = BuiltinPairs(size=pairs), [], []
    for i in range(pairs):
        image, caption = train.load(i)
        image.save(out / "images" / f"train_{i:05d}.png")
        rows.append({"filename": f"train_{i:05d}.png", "caption": caption})
    _write_jsonl(out / "captions.jsonl", rows)
    scenes, rows = ShapeImages(BuiltinZeroShot().seed), []
    for i in range(labelled):
        scenes(i).save(out / "images" / f"label_{i:05d}.png")
        label = shape_label(i)
        rows.append({"filename": f"label_{i:05d}.png", "label": label, "label_name": SHAPES[label]})
    _write_jsonl(out / "labels.jsonl", rows)
    for i in range(captions):
        image, texts = retrieval_item(i)
        image.save(out / "images" / f"test_{i:05d}.png")
        held_out += [{"filename": f"test_{i:05d}.png", "caption": t} for t in texts]
    _write_jsonl(out / "test_captions.jsonl", held_out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--pairs", type=int, default=500, help="training image-caption pairs")
    p.add_argument("--labelled", type=int, default=200, help="held-out labelled scenes (zero-shot)")
    p.add_argument("--captions", type=int, default=100, help="held-out scenes with 2 captions each (retrieval)")
    a = p.parse_args(argv)
    out = write_shapes_data(a.out, a.pairs, a.labelled, a.captions)
    print(f"wrote {a.pairs} training pairs, {a.labelled} labelled and {a.captions} captioned held-out scenes "
          f"to {out}")


if __name__ == "__main__":
    main()
