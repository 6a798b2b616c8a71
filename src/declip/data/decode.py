"""Image decoding and caption checks shared by every file-backed source.

One place decides what counts as unusable, so a manifest, a CSV and a webdataset shard holding the same pairs
give the same samples and the same skip reasons (see :data:`declip.data.sources.SKIP_REASONS`).

Decoding is the costly part of the data pipeline, so a JPEG is decoded at reduced scale (libjpeg's DCT scaling
via PIL's ``draft``) whenever the image is more than twice the model's input on both sides: a random crop of it
still has at least the training resolution, and decoding a 2000 px photo at 1/4 scale is about 10x cheaper.
"""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import BadSample

# Latin letters: ASCII, Latin-1 Supplement (minus the x/÷ signs), Latin Extended-A/B, Latin Extended Additional.
_LATIN = re.compile(r"[A-Za-z\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u024F\u1E00-\u1EFF]")
_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


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


def read_image_bytes(path: str | Path) -> bytes:
    """File contents, with a missing or empty file mapped to its skip reason."""
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise BadSample("missing_file", str(path)) from None
    except PermissionError as e:
        raise BadSample("missing_file", f"{path}: {e.strerror}") from None
    if not data:
        raise BadSample("empty_file", str(path))
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


def decode_image(data: bytes, name: str = "", target: int | None = None,
                 max_side: int | None = None) -> Image.Image:
    """Encoded bytes -> RGB PIL image, or :class:`BadSample` (empty_file / corrupt_image).

    ``target``: the model's input side; a JPEG is decoded at the smallest DCT scale that keeps both sides
    >= 2 * target. ``max_side``: shrink so the longer side is at most this (DCT scaling first, then a
    bicubic resize), as when writing shards. ``None`` for both decodes at full size.
    """
    if not data:
        raise BadSample("empty_file", name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
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
    except Image.DecompressionBombError as e:
        raise BadSample("corrupt_image", f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated data, bad headers, bad palettes
        raise BadSample("corrupt_image", f"{name}: {e}") from None


def load_image(path: str | Path, target: int | None = None) -> Image.Image:
    return decode_image(read_image_bytes(path), str(path), target)
