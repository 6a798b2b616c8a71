"""The DeCLIP JSON-lines manifest (yfcc15m_clean_open_data.json) plus an image root.

One JSON object per line: ``filename`` (relative to the root), ``caption`` (a string, or a list whose first
element is used), optional ``url``, ``tag``, ``label``, ``label_name``. The YFCC15M manifest has 15.4M lines
(3.3 GB), so nothing is parsed up front: a byte-offset index (:mod:`declip.data.offsets`, 8 bytes a line,
memory-mapped and cached) lets ``load(i)`` read and parse line ``i + 1`` alone.

Index order: sample ``i`` is line ``i + 1`` of the file (blank lines included, reported as ``bad_line``).
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from .bounded import contained, filename_problem
from .decode import DEFAULT_MAX_PIXELS, check_caption, load_image
from .offsets import RecordFile, load_or_build, scan_lines
from ..errors import DataError
from .errors import BadSample, require_file
from .source_base import ReopenAfterPickle


class ManifestSource(ReopenAfterPickle):
    """Map-style source over a JSON-lines manifest: ``len()``, ``load(i) -> (RGB image, caption)``."""

    _transient = ("starts", "file")

    def __init__(self, path: str | Path, root: str | Path, image_size: int | None = None,
                 index_dir: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 allow_outside_root: bool = False):
        self.path, self.root, self.image_size = Path(path), Path(root), image_size
        self.index_dir, self.max_pixels, self.allow_outside_root = index_dir, max_pixels, allow_outside_root
        require_file(self.path, "manifest")
        self._open()
        if len(self) == 0:
            raise DataError(f"manifest {self.path} is empty: no lines to train on")

    def _open(self) -> None:
        self.starts, _ = load_or_build(self.path, "lines", lambda p: (scan_lines(p), 0), self.index_dir)
        self.file = RecordFile(self.path)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def key(self, index: int) -> str:
        return f"{self.path.name}:{index + 1}"

    def line(self, index: int) -> bytes:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: line {index + 1} of {len(self)}")
        return self.file.read(int(self.starts[index]), int(self.starts[index + 1]))

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

    def image_path(self, rec: dict, index: int) -> Path:
        """The image of record ``rec`` (line ``index + 1``), or :class:`BadSample` ``outside_root``."""
        return contained(self.root, rec["filename"], self.allow_outside_root, f"{self.path}:{index + 1}")

    def load(self, index: int) -> tuple[Image.Image, str]:
        rec = self.record(index)
        return load_image(self.image_path(rec, index), self.image_size, self.max_pixels), rec["caption"]
