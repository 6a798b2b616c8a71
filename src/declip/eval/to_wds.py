"""``declip data to-wds``: own labelled and caption manifests in CLIP_benchmark's local WebDataset layout.

Why: CLIP_benchmark reads local data sets only in that layout (:mod:`declip.eval.wds_layout`), and an own-data
number is only comparable with ``declip eval``'s if both see the same set. So the conversion goes through
``declip eval``'s own readers: the same line checks, the same class names and templates
(:func:`declip.eval.zeroshot.protocol` under the same ``eval.*`` settings: ``label_name`` or a class-name file,
ImageNet's protocol when the file is ImageNet's), the same caption filter and grouping per image
(:func:`declip.eval.retrieval.group_captions`), the same ``eval.max_images`` cap. Unreadable images are
skipped and counted, as evaluation skips them.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..config import Config
from ..data.errors import BadSample
from .common import EvalDataError, check_root, progress, read_manifest
from .wds_layout import wds_image, write_wds

TASKS = {"labelled": "zeroshot_classification", "captions": "zeroshot_retrieval"}


class _Skips:
    """Unreadable images by reason, with the first few examples: what the conversion reports."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.examples: list[str] = []

    def image(self, path: Path):
        try:
            return wds_image(path)
        except BadSample as e:
            self.counts[e.reason] += 1
            if len(self.examples) < 3:
                self.examples.append(f"{e.reason}: {e.detail}")
            return None


def labelled_to_wds(cfg: Config, manifest: str, root: str, out: str | Path) -> dict:
    """A labelled manifest as a zero-shot classification set: the class index of each image is its column
    under ``declip eval``'s protocol, classnames.txt and the templates are the ones it would use."""
    from .zeroshot import protocol, read_labelled

    man = read_labelled(manifest)
    folder = check_root(root, str(manifest))
    if not man.records:
        raise EvalDataError(f"{man.path}: no usable line ({len(man.bad)} bad, e.g. {man.bad[:1]})")
    _, names, templates, columns = protocol(man, cfg)
    recs = man.records[: cfg.eval.max_images] if cfg.eval.max_images else man.records
    skips = _Skips()

    def samples():
        for r in progress(recs, desc="to-wds"):
            image = skips.image(folder / r["filename"])
            if image is not None:
                yield (*image, columns[r["label"]] if columns else r["label"])

    n = write_wds(out, samples(), classnames=names, templates=templates)
    return _stats("labelled", out, n, man.bad, skips, classes=len(names), templates=len(templates))


def captions_to_wds(cfg: Config, manifest: str, root: str, out: str | Path) -> dict:
    """A caption manifest as a retrieval set: one sample per image, with all its usable captions."""
    from .retrieval import _check_record, group_captions

    man = read_manifest(manifest, _check_record)
    folder = check_root(root, str(man.path))
    names, captions, skipped = group_captions(man.records, str(man.path))
    if cfg.eval.max_images:
        names, captions = names[: cfg.eval.max_images], captions[: cfg.eval.max_images]
    skips = _Skips()

    def samples():
        for name, caps in progress(zip(names, captions), total=len(names), desc="to-wds"):
            image = skips.image(folder / name)
            if image is not None:
                yield (*image, caps)

    n = write_wds(out, samples())
    return _stats("captions", out, n, man.bad, skips, skipped_captions=sum(skipped.values()))


def _stats(kind: str, out, n: int, bad_lines: list[str], skips: _Skips, **extra) -> dict:
    if not n:
        raise EvalDataError(f"no readable sample to write ({len(bad_lines)} bad lines, unreadable images "
                            f"{dict(skips.counts)}; e.g. {(bad_lines + skips.examples)[:1]})")
    return {"kind": kind, "out": str(out), "samples": n, "bad_lines": len(bad_lines),
            "unreadable": dict(skips.counts), "examples": bad_lines[:3] + skips.examples, **extra}


def clip_benchmark_command(out: str | Path, kind: str, model_dir: str = "EXPORT_DIR") -> str:
    """The ``clip_benchmark eval`` line for a converted folder and a ``declip export`` folder."""
    out = Path(out).resolve()
    recall = " --recall_k 1 5 10" if kind == "captions" else ""
    return (f"clip_benchmark eval --model_type open_clip --model local-dir:{model_dir} --pretrained declip "
            f"--dataset wds/{out.name} --dataset_root {out} --task {TASKS[kind]}{recall} --no_amp "
            f"--num_workers 0 --output {out.name}_result.json")
