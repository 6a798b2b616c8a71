"""Image decoding and caption checks shared by every file-backed source.

One place decides what counts as unusable, so a manifest, a CSV and a webdataset shard holding the same pairs
give the same samples and the same skip reasons (see :data:`declip.data.sources.SKIP_REASONS`).

Decoding is the costly part of the data pipeline, so a JPEG is decoded at reduced scale (libjpeg's DCT scaling
via PIL's ``draft``) whenever the image is more than twice the model's input on both sides: a random crop of it
still has at least the training resolution, and decoding a 2000 px photo at 1/4 scale is about 10x cheaper.
"""
from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .. import storage
from ..errors import DataError
from .errors import BadSample

# Latin letters: ASCII, Latin-1 Supplement (minus the x/÷ signs), Latin Extended-A/B, Latin Extended Additional.
_LATIN = re.compile(r"[A-Za-z\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u024F\u1E00-\u1EFF]")
_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# data.max_image_pixels' default: 64 Mpx (8000 x 8000; 192 MB as RGB, once per worker decoding it). Larger
# images are skipped as too_large from their header, before any pixel is decoded. PIL's own decompression-bomb
# limit (Image.MAX_IMAGE_PIXELS) is set to the same value by decode_image: its warning (above the limit) and
# error (above twice it) then agree with ours instead of firing at PIL's unrelated default of ~89 Mpx.
DEFAULT_MAX_PIXELS = 64_000_000
# data.max_image_bytes' default: 64 MiB. An image file (or remote object, or shard member) larger than this is
# skipped as too_large from its size (fstat, the object's HEAD, the tar header) before any of it is read, so a
# stray 2 GB file costs no memory. Web images are rarely over a few MB; an 8000 x 8000 JPEG is about 20-40 MB.
DEFAULT_MAX_BYTES = 64 * 2**20


def check_caption(caption, where: str = "") -> str:
    """The caption to train on (stripped), or :class:`BadSample`.

    Empty or whitespace-only captions carry no signal. Captions without a single Latin letter (CJK-only,
    emoji, digits) are dropped because the CLIP BPE vocabulary and the English EDA cannot use them; the
    DeCLIP reference resamples CJK captions for the same reason. Long captions are kept: the tokenizer
    truncates them to the context length.
    """
    if not isinstance(caption, str):
        raise BadSample("bad_line", f"{where}: caption is {type(caption).__name__}, not a string")
    text = caption.strip()
    if not text:
        raise BadSample("empty_caption", f"{where}: caption is empty")
    if not _LATIN.search(text):
        raise BadSample("non_latin_caption", f"{where}: {text[:40]!r}")
    return text


def _bytes_too_large(name, size: int, max_bytes: int) -> BadSample:
    return BadSample("too_large", f"{name}: {size / 2**20:.1f} MiB > data.max_image_bytes={max_bytes} "
                                  f"({max_bytes / 2**20:g} MiB)")


def read_image_bytes(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """File contents, with a missing, empty, non-regular or too large file mapped to its skip reason.

    Opened with O_NONBLOCK and checked to be a regular file before any read: a FIFO (or a device) in place of
    an image would otherwise block the read forever; O_NONBLOCK makes opening a FIFO return at once, and it
    changes nothing for a regular file's reads. A file over ``max_bytes`` is refused from its size before any
    read, and at most ``max_bytes + 1`` bytes are ever read (a file growing while read is refused too).
    A remote URL (``s3://``, ...) is read through :mod:`declip.storage` with the same reasons.
    """
    if storage.is_remote(path):
        return _read_remote(str(path), max_bytes)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise BadSample("missing_file", str(path)) from None
    except PermissionError as e:
        raise BadSample("missing_file", f"{path}: {e.strerror}") from None
    except OSError as e:  # ENXIO: a socket; anything else that is there but cannot be opened as a file
        raise BadSample("not_a_file", f"{path}: {e.strerror}") from None
    with open(fd, "rb", closefd=True) as f:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise BadSample("missing_file", f"{path}: a folder")
        if not stat.S_ISREG(st.st_mode):
            raise BadSample("not_a_file", f"{path}: not a regular file (a FIFO, socket or device)")
        if st.st_size > max_bytes:
            raise _bytes_too_large(path, st.st_size, max_bytes)
        try:  # read(n) allocates n bytes up front: ask for the file's size (+1 to see it grow), not the cap
            data = f.read(st.st_size + 1)
            if len(data) > st.st_size:  # it grew since fstat: the rest, up to the cap
                data += f.read(max_bytes + 1 - len(data))
        except OSError as e:
            raise BadSample("missing_file", f"{path}: {e.strerror}") from None
    if len(data) > max_bytes:
        raise _bytes_too_large(path, len(data), max_bytes)
    if not data:
        raise BadSample("empty_file", str(path))
    return data


def _read_remote(url: str, max_bytes: int) -> bytes:
    """An object's bytes: its size from a HEAD first (over ``max_bytes``: too_large, nothing fetched), then one
    GET. A missing or denied object is ``missing_file`` (the detail says which)."""
    try:
        data = storage.read_object(url, max_bytes)
    except storage.ObjectTooLarge as e:
        raise _bytes_too_large(url, e.size, max_bytes) from None
    except (FileNotFoundError, PermissionError) as e:
        raise BadSample("missing_file", str(e)) from None
    except (OSError, DataError) as e:  # the connection failed after retries, the bucket went away: this sample
        raise BadSample("missing_file", str(e)) from None  # is lost and counted; the skip-rate stop names it
    if not data:
        raise BadSample("empty_file", url)
    return data


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparent pixels are composited over white (the usual web-page background);
    16-bit and float images are scaled to 8 bits instead of clipped."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _TRANSPARENT_MODES or (mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16"):
        arr = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max(initial=0.0)
        scale = 255.0 if mode == "F" and peak <= 1.0 else (255.0 / 65535.0 if peak > 255 else 1.0)
        arr = np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def fit_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled so the longer side is at most ``max_side`` (never enlarged)."""
    w, h = size
    s = min(1.0, max_side / max(w, h))
    return max(1, round(w * s)), max(1, round(h * s))


def _too_large(name: str, size: tuple[int, int], max_pixels: int) -> BadSample:
    w, h = size
    return BadSample("too_large", f"{name}: {w} x {h} = {w * h / 1e6:.1f} Mpx > data.max_image_pixels="
                                  f"{max_pixels / 1e6:g} Mpx")


def decode_image(data: bytes, name: str = "", target: int | None = None,
                 max_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Encoded bytes -> RGB PIL image, or :class:`BadSample` (empty_file / corrupt_image / too_large).

    ``target``: the model's input side; a JPEG is decoded at the smallest DCT scale that keeps both sides
    >= 2 * target. ``max_side``: shrink so the longer side is at most this (DCT scaling first, then a
    bicubic resize), as when writing shards. ``None`` for both decodes at full size. ``max_pixels``: larger
    images are refused from the header alone (PIL's open is lazy), before the decode allocates them.
    """
    if not data:
        raise BadSample("empty_file", name)
    if Image.MAX_IMAGE_PIXELS != max_pixels:  # per process (spawned workers too): PIL's check agrees with ours
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        img = Image.open(io.BytesIO(data))
        if img.size[0] * img.size[1] > max_pixels:
            raise _too_large(name, img.size, max_pixels)
        final = fit_size(img.size, max_side) if max_side else None
        if img.format == "JPEG" and (target or final):
            img.draft("RGB", final or (2 * target, 2 * target))
        img.load()
        img = to_rgb(img)
        if final and img.size != final:
            img = img.resize(final, Image.Resampling.BICUBIC, reducing_gap=3.0)
        return img
    except UnidentifiedImageError:
        raise BadSample("corrupt_image", f"{name}: not a recognised image format") from None
    except Image.DecompressionBombError as e:  # over twice the limit: PIL refuses it in open()
        raise BadSample("too_large", f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated data, bad headers, bad palettes
        raise BadSample("corrupt_image", f"{name}: {e}") from None


def load_image(path: str | Path, target: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES) -> Image.Image:
    return decode_image(read_image_bytes(path, max_bytes), str(path), target, max_pixels=max_pixels)
