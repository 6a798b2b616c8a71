"""The DeCLIP JSON-lines manifest (yfcc15m_clean_open_data.json) plus an image root.

One JSON object per line: ``filename`` (relative to the root), ``caption`` (a string, or a list whose first
element is used), optional ``url``, ``tag``, ``label``, ``label_name``. The YFCC15M manifest has 15.4M lines
(3.3 GB), so nothing is parsed up front: a byte-offset index (:mod:`declip.data.offsets`, 8 bytes a line,
memory-mapped and cached) lets ``load(i)`` read and parse line ``i + 1`` alone.

Index order: sample ``i`` is line ``i + 1`` of the file (blank lines included, reported as ``bad_line``).

The manifest and the root may be URLs (``s3://bucket/m.jsonl``, ``s3://bucket/images``; :mod:`declip.storage`):
a line is then one ranged GET and its index is cached locally, keyed on the object's ETag.
Every line read checks its own boundaries (a newline before it, none inside, one at its end): a line index
gone stale in a way its key missed (an edit of the same size with the mtime put back, outside the sampled
blocks) is rebuilt at the first line it would misread, never used to hand out a fragment of two lines.
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from .. import storage
from .bounded import contained, filename_problem
from .decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, check_caption, decode_image, read_image_bytes
from .offsets import RecordFile, load_or_build, scan_lines
from ..errors import DataError
from .errors import BadSample, require_file
from .source_base import FetchThenDecode, ReopenAfterPickle


def whole_line(raw: bytes, start: int, end: int, size: int) -> bytes | None:
    """The line in ``raw`` (bytes ``[start - 1, end)`` of the file, or ``[0, end)`` when ``start`` is 0) if those
    bytes are exactly one line: a newline (or the file's start) before it, none inside, a newline (or the file's
    end) after. None when the index that gave ``start`` and ``end`` no longer matches the file."""
    skip = 1 if start else 0
    if start and raw[:1] != b"\n":
        return None
    if raw.find(b"\n", skip, len(raw) - 1) != -1 or not (raw.endswith(b"\n") or end == size):
        return None
    return raw[skip:] if skip else raw


class ManifestSource(FetchThenDecode, ReopenAfterPickle):
    """Map-style source over a JSON-lines manifest: ``len()``, ``load(i) -> (RGB image, caption)``."""

    _transient = ("starts", "file", "size")

    def __init__(self, path: str | Path, root: str | Path, image_size: int | None = None,
                 index_dir: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 allow_outside_root: bool = False, max_bytes: int = DEFAULT_MAX_BYTES):
        self.path, self.root, self.image_size = storage.location(path), storage.location(root), image_size
        self.index_dir, self.max_pixels, self.allow_outside_root = index_dir, max_pixels, allow_outside_root
        self.max_bytes = max_bytes
        self.remote = storage.is_remote(path) or storage.is_remote(root)
        require_file(self.path, "manifest")
        self._open()
        if len(self) == 0:
            raise DataError(f"manifest {self.path} is empty: no lines to train on")

    def _open(self, rebuild: bool = False) -> None:
        self.starts, _ = load_or_build(self.path, "lines", lambda p: (scan_lines(p), 0), self.index_dir, rebuild)
        self.size = int(self.starts[-1])  # the file's size when indexed (the end of the last line)
        self.file = RecordFile(self.path)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def key(self, index: int) -> str:
        return f"{storage.basename(self.path)}:{index + 1}"

    def line(self, index: int) -> bytes:
        """Line ``index + 1``'s bytes (with its newline), read with one pread (one ranged GET for a URL) that
        takes the byte before it too, to check it is a whole line (:func:`whole_line`)."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: line {index + 1} of {len(self)}")
        start, end = int(self.starts[index]), int(self.starts[index + 1])
        body = whole_line(self._read(index, max(start - 1, 0), end), start, end, self.size)
        return body if body is not None else self._reindexed_line(index)

    def _reindexed_line(self, index: int) -> bytes:
        """The file changed since it was indexed, unseen by the index's key: index it again and read the line."""
        self._open(rebuild=True)
        if 0 <= index < len(self):
            start, end = int(self.starts[index]), int(self.starts[index + 1])
            body = whole_line(self._read(index, max(start - 1, 0), end), start, end, self.size)
            if body is not None:
                return body
        raise BadSample("bad_line", f"{self.path}:{index + 1}: the file is changing while it is read (its line "
                                    "index does not match it even when rebuilt)")

    def _read(self, index: int, start: int, end: int) -> bytes:
        if not self.file.remote:
            return self.file.read(start, end)
        try:
            return self.file.read(start, end)
        except (OSError, DataError) as e:  # removed, denied or unreachable since it was indexed: counted, skipped
            raise BadSample("missing_file", f"{self.path}:{index + 1}: the line could not be read ({e})") from None

    def parse(self, index: int, required: tuple[str, ...] = ("filename", "caption")) -> dict:
        """Line ``index + 1`` as a JSON object holding the ``required`` keys and a usable ``filename`` (a
        non-empty string without NUL: :func:`~declip.data.bounded.filename_problem`), or :class:`BadSample`
        ``bad_line`` naming FILE:LINE and what is wrong. Shared by the caption form (:meth:`record`) and the
        labelled form (:mod:`declip.data.labelled`)."""
        where = f"{self.path}:{index + 1}"
        raw = self.line(index).rstrip(b"\r\n")
        try:
            rec = json.loads(raw)
        except UnicodeDecodeError as e:
            raise BadSample("bad_line", f"{where}: not UTF-8 ({e.reason})") from None
        except json.JSONDecodeError as e:
            why = "empty line" if not raw.strip() else f"invalid JSON: {e.msg} (column {e.colno})"
            raise BadSample("bad_line", f"{where}: {why}") from None
        if not isinstance(rec, dict):
            raise BadSample("bad_line", f"{where}: expected a JSON object, got {type(rec).__name__}")
        for k in required:
            if k not in rec:
                raise BadSample("bad_line", f"{where}: missing key '{k}'")
        why = filename_problem(rec["filename"])
        if why:
            raise BadSample("bad_line", f"{where}: 'filename' {why}")
        return rec

    def record(self, index: int) -> dict:
        """Line ``index + 1`` parsed and checked: a dict with ``filename`` and ``caption`` (a str), or
        :class:`BadSample` naming FILE:LINE and what is wrong."""
        where = f"{self.path}:{index + 1}"
        rec = self.parse(index)
        caption = rec["caption"]
        if isinstance(caption, list):
            if not caption:
                raise BadSample("empty_caption", f"{where}: empty caption list")
            caption = caption[0]
        rec["caption"] = check_caption(caption, where)
        return rec

    def image_path(self, rec: dict, index: int) -> Path | str:
        """The image of record ``rec`` (line ``index + 1``), or :class:`BadSample` ``outside_root``."""
        return contained(self.root, rec["filename"], self.allow_outside_root, f"{self.path}:{index + 1}")

    def fetch(self, index: int) -> tuple[str, str, bytes]:
        """The I/O of sample ``index``: (caption, image name, image bytes), within ``data.max_image_bytes``."""
        rec = self.record(index)
        path = self.image_path(rec, index)
        return rec["caption"], str(path), read_image_bytes(path, self.max_bytes)

    def decode(self, index: int, fetched: tuple[str, str, bytes]) -> tuple[Image.Image, str]:
        caption, name, data = fetched
        return decode_image(data, name, self.image_size, max_pixels=self.max_pixels), caption
