"""``declip data to-wds``: own labelled and caption manifests in CLIP_benchmark's local WebDataset layout.

Why: CLIP_benchmark reads local data sets only in that layout (:mod:`declip.eval.wds_layout`), and an own-data
number is only comparable with ``declip eval``'s if both see the same set. So the conversion goes through
``declip eval``'s own readers: the same line checks, the same class names and templates
(:func:`declip.eval.zeroshot.protocol` under the same ``eval.*`` settings: ``label_name`` or a class-name file,
ImageNet's protocol when the file is ImageNet's), the same caption filter and grouping per image
(:func:`declip.eval.retrieval.group_captions`), the same ``eval.max_images`` cap. Unreadable images are
skipped and counted, as evaluation skips them.

Why ``--out`` is checked first (:func:`check_out`): the conversion writes ``classnames.txt`` and templates, the
names a data set's own folder often holds, and ``--overwrite`` removes the layout's ``test/`` files; so it never
writes among its inputs, and never into a non-empty folder unless told, and then replaces only its own files.
"""
from __future__ import annotations

import errno
from collections import Counter
from pathlib import Path

from ..config import Config
from ..data.bounded import contained
from ..data.errors import BadSample
from .common import EvalDataError, check_root, progress, read_manifest
from .wds_layout import wds_image, write_wds

TASKS = {"labelled": "zeroshot_classification", "captions": "zeroshot_retrieval"}


class _Skips:
    """Unreadable images by reason, with the first few examples: what the conversion reports."""

    def __init__(self, cfg: Config):
        self.allow_outside = cfg.data.allow_outside_root
        self.counts: Counter = Counter()
        self.examples: list[str] = []

    def image(self, root: Path, name: str, where: str):
        """The image ``name`` under ``root`` for the layout, as evaluation reads it (inside the root unless
        ``data.allow_outside_root``), or None, counted, when it is unusable."""
        try:
            return wds_image(contained(root, name, self.allow_outside, where))
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
    skips = _Skips(cfg)

    def samples():
        for r in progress(recs, desc="to-wds"):
            image = skips.image(folder, r["filename"], f"{man.path}:{r['_line']}")
            if image is not None:
                yield (*image, columns[r["label"]] if columns else r["label"])

    n = _write(out, samples(), classnames=names, templates=templates)
    return _stats("labelled", out, n, man.bad, skips, classes=len(names), templates=len(templates))


def captions_to_wds(cfg: Config, manifest: str, root: str, out: str | Path) -> dict:
    """A caption manifest as a retrieval set: one sample per image, with all its usable captions."""
    from .retrieval import _check_record, group_captions

    man = read_manifest(manifest, _check_record)
    folder = check_root(root, str(man.path))
    names, captions, skipped = group_captions(man.records, str(man.path))
    if cfg.eval.max_images:
        names, captions = names[: cfg.eval.max_images], captions[: cfg.eval.max_images]
    skips = _Skips(cfg)

    def samples():
        for name, caps in progress(zip(names, captions), total=len(names), desc="to-wds"):
            image = skips.image(folder, name, str(man.path))
            if image is not None:
                yield (*image, caps)

    n = _write(out, samples())
    return _stats("captions", out, n, man.bad, skips, skipped_captions=sum(skipped.values()))


def check_out(out: str | Path, manifest: str | Path, root: str | Path, overwrite: bool = False) -> None:
    """Refuse an ``--out`` the conversion could damage, before anything is read: a file (or one on its path), a
    folder among the inputs (the image folder, inside it or holding it; the manifest's folder or one holding
    it), a non-empty folder without ``overwrite``, and one whose ``test`` is not a folder."""
    out = Path(out)
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise EvalDataError(f"--out {out}: {blocker} is a file, not a folder: choose another --out")
    here, images, listed = out.resolve(), Path(root).resolve(), Path(manifest).resolve()
    clash = ("the image folder" if here == images else "inside the image folder" if images in here.parents
             else "a folder holding the image folder" if here in images.parents
             else "the manifest's folder" if here == listed.parent
             else "a folder holding the manifest" if here in listed.parents else None)
    if clash:
        raise EvalDataError(f"--out {out} is {clash} ({root if 'image' in clash else manifest}): the conversion "
                            "never writes among its inputs (their classnames.txt, templates or test/ would be "
                            "replaced); choose an --out outside the data's folders")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if present and not overwrite:
        shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
        raise EvalDataError(f"--out {out} is not empty ({shown}): choose a new or empty folder, or pass "
                            "--overwrite to replace an earlier conversion there (only its test/ shards, "
                            "nshards.txt and the layout's .txt files are replaced; other files are kept)")
    if (out / "test").exists() and not (out / "test").is_dir():
        raise EvalDataError(f"--out {out}: {out / 'test'} is a file, not the layout's test/ folder: move it away "
                            "or choose another --out")


def _write(out: str | Path, samples, **layout) -> int:
    """:func:`write_wds`, an OS error as one line naming the folder: nothing of the conversion is left then."""
    try:
        return write_wds(out, samples, **layout)
    except OSError as e:
        remedy = "free some space" if e.errno == errno.ENOSPC else "make it writable"
        raise EvalDataError(f"--out {out}: cannot write {e.filename or out} ({e.strerror or e}); the conversion "
                            f"left nothing behind: {remedy}, or choose another --out") from None


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
