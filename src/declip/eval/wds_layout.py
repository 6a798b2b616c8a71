"""CLIP_benchmark's local WebDataset layout, written from the built-in sets or from own manifests.

``clip_benchmark eval --dataset wds/NAME --dataset_root DIR`` (1.6.2, ``build_wds_dataset``) reads:

- ``DIR/test/nshards.txt`` and ``DIR/test/{0..N-1}.tar``; each sample an image (``KEY.png|jpg|webp``) plus
  ``KEY.cls`` (the class index, classification) or ``KEY.txt`` (its captions, one a line, retrieval);
- classification: ``DIR/classnames.txt`` (line i names class i) and ``DIR/zeroshot_classification_templates.txt``
  (templates naming the class ``{c}``);
- retrieval: ``DIR/dataset_type.txt`` holding ``retrieval``.

Why the image bytes are chosen with care (:func:`wds_image`): CLIP_benchmark decodes with PIL at full size, so
a file is copied byte for byte only where that decode equals declip's (an RGB JPEG, PNG or WebP); any other
(grey, palette, transparent, 16-bit, CMYK) is stored as a lossless PNG of declip's own decode (transparency over
white, 16-bit scaled). With ``eval.jpeg_draft=false`` both evaluations then see the same pixels.

Why the layout is staged and then moved in (:func:`write_wds`): the folder may hold files of the
user's, and a conversion that stops midway (a full disk, an interrupt) must leave neither a half-written set nor
a folder it emptied; only the layout's own files (:func:`layout_files`) are ever replaced there.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Iterable

from ..data.decode import decode_image, read_image_bytes

_KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
LAYOUT_TEXTS = ("classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt")
_SHARD_FILE = re.compile(r"(\d+\.tar|nshards\.txt)")


def wds_image(path: str | Path) -> tuple[str, bytes]:
    """(extension, bytes) of an image for the layout, or :class:`~declip.data.errors.BadSample`."""
    from PIL import Image

    data = read_image_bytes(path)
    img = decode_image(data, str(path))  # missing / corrupt: raised as eval counts them
    with Image.open(io.BytesIO(data)) as probe:
        ext = _KEPT_FORMATS.get(probe.format or "")
        if ext and probe.mode == "RGB" and "transparency" not in probe.info:
            return ext, data
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "png", buf.getvalue()


def _braced(template) -> str:
    """A declip template (a ``{}`` string, or open_clip's callable of the class name) in CLIP_benchmark's
    ``{c}`` form."""
    return template("{c}") if callable(template) else template.replace("{}", "{c}")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def layout_files(folder: str | Path) -> list[Path]:
    """The files of the layout in ``folder`` (``test/N.tar``, ``test/nshards.txt``, the three text files): what a
    conversion writes, and all that it replaces there."""
    folder = Path(folder)
    found = [folder / name for name in LAYOUT_TEXTS if (folder / name).is_file()]
    test = folder / "test"
    if test.is_dir():
        found += sorted(p for p in test.iterdir() if _SHARD_FILE.fullmatch(p.name) and p.is_file())
    return found


def write_wds(folder: str | Path, samples: Iterable[tuple[str, bytes, int | list[str]]],
              classnames: list[str] | None = None, templates: Iterable[str] = (), shard_size: int = 1000) -> int:
    """Write ``samples`` (extension, image bytes, class index or captions) as the ``test`` split under
    ``folder``; ``classnames`` given: a classification set with ``templates`` (declip's: ``{}`` strings or
    open_clip's callables), else a retrieval set. Returns the number of samples written.

    The set is written into a hidden staging folder inside ``folder`` (the same file system, so moving it in is
    a rename) and moved in once complete, replacing only the layout's files of an earlier conversion (another
    kind's text files included); other files in ``folder`` are kept. On any failure the staging folder, and any
    folder made for it, ``folder`` included, is removed, and ``folder`` is as it was. With no sample at all
    nothing is written."""
    folder = Path(folder)
    made = next((p for p in reversed((folder, *folder.parents)) if not p.exists()), None)
    n, stage, moved = 0, None, False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=folder, prefix=".partial-"))
        n = _write_layout(stage, samples, classnames, templates, shard_size)
        if n:
            _move_in(stage, folder)
            moved = True
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        if made is not None and not moved:
            shutil.rmtree(made, ignore_errors=True)
    return n


def _move_in(stage: Path, folder: Path) -> None:
    """The staged layout in place of ``folder``'s layout files: each new file renamed over its old name first,
    then the old layout files the new set has not replaced removed (a set with fewer shards, the other kind's
    text files), so that no moment leaves ``folder`` without a set."""
    stale = set(layout_files(folder))
    (folder / "test").mkdir(exist_ok=True)
    for new in sorted(stage.rglob("*")):
        if new.is_file():
            target = folder / new.relative_to(stage)
            os.replace(new, target)
            stale.discard(target)
    for old in stale:
        old.unlink()


def _write_layout(folder: Path, samples, classnames, templates, shard_size: int) -> int:
    (folder / "test").mkdir()
    tar, n, shards = None, 0, 0
    for ext, data, target in samples:
        if n % shard_size == 0:
            if tar is not None:
                tar.close()
            tar, shards = tarfile.open(folder / "test" / f"{shards}.tar", "w"), shards + 1
        key = f"s{n:07d}"
        _add(tar, f"{key}.{ext}", data)
        if isinstance(target, int):
            _add(tar, f"{key}.cls", str(target).encode())
        else:  # one caption a line: a line break inside a caption is whitespace to the tokenizer anyway
            _add(tar, f"{key}.txt", "\n".join(" ".join(c.split()) for c in target).encode("utf-8"))
        n += 1
    if tar is not None:
        tar.close()
    if not n:
        return 0
    (folder / "test" / "nshards.txt").write_text(f"{shards}\n")
    if classnames is not None:
        (folder / "classnames.txt").write_text("".join(s + "\n" for s in classnames), encoding="utf-8")
        (folder / "zeroshot_classification_templates.txt").write_text(
            "".join(_braced(t) + "\n" for t in templates), encoding="utf-8")
    else:
        (folder / "dataset_type.txt").write_text("retrieval\n")
    return n
