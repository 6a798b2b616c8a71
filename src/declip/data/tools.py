"""``declip data check`` and ``declip data shard``: validate a manifest before a long run, and convert it to
webdataset shards.

Both walk the manifest through :class:`~declip.data.manifest.ManifestSource`, so they apply exactly the
checks training applies (same parsing, caption rules and decoder) and report the same skip reasons. Image
work runs in a thread pool (PIL releases the GIL while decoding); work is submitted in bounded chunks so a
15M-line manifest never queues 15M futures.
"""
from __future__ import annotations

import io
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TextIO

from .. import storage
from .bounded import call_bounded
from .scan import CHECK_WORDING, Problems, at_line, ordered
from .decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from .errors import SKIP_REASONS, BadSample

CONTEXT_TOKENS = 75  # 77 minus SOT and EOT: longer captions are truncated by the tokenizer


def _is_long(caption: str) -> bool:
    if len(caption.encode()) <= CONTEXT_TOKENS:  # every BPE token covers at least one byte
        return False
    from .tokenizer import get_tokenizer

    return len(get_tokenizer().encode(caption)) > CONTEXT_TOKENS


def check_manifest(path: str, root: str, threads: int = 8, max_examples: int = 5, image_size: int = 224,
                   progress: bool = True, out: TextIO | None = None, timeout_s: float = 60.0,
                   max_pixels: int = DEFAULT_MAX_PIXELS, allow_outside_root: bool = False,
                   classnames: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Parse every line, check its caption, and decode its image as training would (the same path
    containment, size limit and per-sample timeout). Prints a report and returns ``{"lines", "ok",
    "problems": {reason: count}, "examples": {reason: [...]}, "long_captions"}``. A labelled manifest
    (``filename``, ``label``) is checked as one instead (:mod:`declip.data.labelled`), with the same limits."""
    from ..errors import DataError
    from .decode import load_image
    from .errors import require_file
    from .labelled import LABELLED, check_labelled, manifest_kind
    from .manifest import ManifestSource

    if storage.is_remote(root):  # else every line would be reported as a missing file
        storage.require_bucket(root, "--root")
    elif not Path(root).is_dir():
        raise DataError(f"--root {root} " + ("is not a folder" if Path(root).exists() else "does not exist") +
                        ": pass the folder the manifest's filenames are relative to")
    limits = dict(timeout_s=timeout_s, max_pixels=max_pixels, allow_outside_root=allow_outside_root,
                  max_bytes=max_bytes)
    require_file(path, "manifest")
    if manifest_kind(path) == LABELLED:
        return check_labelled(path, root, threads, max_examples, image_size, progress, out, classnames, **limits)

    out = out or sys.stdout
    t0 = time.perf_counter()
    src = ManifestSource(path, root, image_size, max_pixels=max_pixels, allow_outside_root=allow_outside_root,
                         max_bytes=max_bytes)

    def one(i: int):
        try:
            rec = src.record(i)
            image = src.image_path(rec, i)  # the record parsed once: load() would read and parse the line again
            call_bounded(lambda: load_image(image, image_size, max_pixels, max_bytes), timeout_s,
                         f"{src.path}:{i + 1}", **CHECK_WORDING)
            return None, _is_long(rec["caption"])
        except BadSample as e:
            return (e.reason, at_line(src, i, e.detail)), False

    problems = Problems(max_examples)
    long_captions = 0
    for bad, long in ordered(one, len(src), threads, progress, "check"):
        long_captions += long
        if bad:
            problems.note(*bad)
    n, n_bad = len(src), problems.total
    print(f"checked {n} lines of {path} (images under {root}) in {time.perf_counter() - t0:.1f} s", file=out)
    print(f"ok: {n - n_bad}", file=out)
    if n_bad:
        problems.print(SKIP_REASONS, out, f"problems: {n_bad} ({100 * n_bad / max(n, 1):.2f}%)")
    if long_captions:
        print(f"note: {long_captions} captions exceed {CONTEXT_TOKENS} BPE tokens and will be truncated "
              "(not a problem)", file=out)
    return {"lines": n, "ok": n - n_bad, "problems": dict(problems.counts), "examples": problems.examples,
            "long_captions": long_captions}


def shard_sample(src, i: int, max_side: int, quality: int) -> tuple[dict | None, tuple[str, str] | None]:
    """Manifest line ``i + 1`` as a webdataset sample (key.jpg, key.txt, key.json), or (None, (reason, where))."""
    from PIL import Image

    from .decode import decode_image, read_image_bytes

    try:
        rec = src.record(i)
        path = src.image_path(rec, i)
        data = read_image_bytes(path, src.max_bytes)
        img = decode_image(data, str(path), max_side=max_side, max_pixels=src.max_pixels)
    except BadSample as e:
        return None, (e.reason, at_line(src, i, e.detail))
    with Image.open(io.BytesIO(data)) as probe:  # decodable: checked above
        original = probe.size
        keep = probe.format == "JPEG" and probe.mode == "RGB" and img.size == probe.size
    if not keep:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        data = buf.getvalue()
    meta = {"key": f"{i:09d}", "caption": rec["caption"], "filename": rec["filename"],
            "width": img.size[0], "height": img.size[1], "original_width": original[0],
            "original_height": original[1]}
    meta.update({k: rec[k] for k in ("url", "tag", "label", "label_name") if k in rec})
    return {"__key__": meta["key"], "jpg": data, "txt": rec["caption"],
            "json": json.dumps(meta, ensure_ascii=False).encode()}, None


def shard_manifest(path: str, root: str, out_dir: str, max_side: int = 256, shard_size: int = 1000,
                   threads: int = 8, quality: int = 95, progress: bool = True, out: TextIO | None = None,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Write ``out_dir/{00000..}.tar`` webdataset shards (key.jpg, key.txt, key.json) from a manifest.

    The key is the 0-based manifest line number (9 digits), so every shard sample traces back to its line.
    Images are shrunk so the longer side is <= ``max_side`` and re-encoded as JPEG; an RGB JPEG that already
    fits is copied byte for byte (no second lossy encode). Bad samples are skipped and counted by reason; an
    image file over ``max_bytes`` is skipped as ``too_large`` before it is read.
    """
    import webdataset as wds

    from .manifest import ManifestSource

    out = out or sys.stdout
    t0 = time.perf_counter()
    src = ManifestSource(path, root, max_bytes=max_bytes)
    dest = Path(out_dir)
    dest.mkdir(parents=True, exist_ok=True)

    def one(i: int):
        return shard_sample(src, i, max_side, quality)

    skipped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    shards: list[Path] = []
    writer, tmp, in_shard, written = None, None, 0, 0

    def close():
        if writer is not None:
            writer.close()
            tmp.rename(shards[-1])  # a shard appears only once complete

    for sample, bad in ordered(one, len(src), threads, progress, "shard"):
        if bad:
            skipped[bad[0]] += 1
            if len(examples.setdefault(bad[0], [])) < 5:
                examples[bad[0]].append(bad[1])
            continue
        if writer is None or in_shard == shard_size:
            close()
            shards.append(dest / f"{len(shards):05d}.tar")
            tmp = shards[-1].with_name(shards[-1].name + ".tmp")
            writer, in_shard = wds.TarWriter(str(tmp)), 0
        writer.write(sample)
        in_shard += 1
        written += 1
    close()
    pattern = f"{dest}/{{00000..{len(shards) - 1:05d}}}.tar" if shards else ""
    stats = {"manifest": str(path), "root": str(root), "samples": written, "shards": len(shards),
             "pattern": pattern, "max_side": max_side, "skipped": dict(skipped), "examples": examples}
    (dest / "shard_stats.json").write_text(json.dumps(stats, indent=1))
    print(f"wrote {written} samples in {len(shards)} shards in {time.perf_counter() - t0:.1f} s: "
          f"data.source=webdataset data.path='{pattern}'", file=out)
    if skipped:
        print(f"skipped {sum(skipped.values())}: " + ", ".join(f"{r} {skipped[r]}" for r in SKIP_REASONS
                                                                 if skipped[r]), file=out)
        for reason in SKIP_REASONS:
            for e in examples.get(reason, [])[:2]:
                print(f"  {reason}: {e}", file=out)
    return stats
