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
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Iterable

from ..data.decode import decode_image, read_image_bytes

_KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


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


def write_wds(folder: str | Path, samples: Iterable[tuple[str, bytes, int | list[str]]],
              classnames: list[str] | None = None, templates: Iterable[str] = (), shard_size: int = 1000) -> int:
    """Write ``samples`` (extension, image bytes, class index or captions) as the ``test`` split under
    ``folder``; ``classnames`` given: a classification set with ``templates`` (declip's: ``{}`` strings or
    open_clip's callables), else a
    retrieval set. Returns the number of samples written."""
    folder = Path(folder)
    (folder / "test").mkdir(parents=True, exist_ok=True)
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
    (folder / "test" / "nshards.txt").write_text(f"{shards}\n")
    for stale in ("classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt"):
        (folder / stale).unlink(missing_ok=True)  # a folder converted before as the other kind
    if classnames is not None:
        (folder / "classnames.txt").write_text("".join(s + "\n" for s in classnames), encoding="utf-8")
        (folder / "zeroshot_classification_templates.txt").write_text(
            "".join(_braced(t) + "\n" for t in templates), encoding="utf-8")
    else:
        (folder / "dataset_type.txt").write_text("retrieval\n")
    return n
