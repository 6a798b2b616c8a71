"""CSV / TSV of (image path, caption) rows, the open_clip convention.

Columns are picked by header name (``data.csv_image_key``, default ``filepath``; ``data.csv_caption_key``,
default ``title``), fields split by ``data.csv_separator`` (default tab). Image paths are relative to
``data.root`` when it is set, else used as written (open_clip's behaviour). Like the manifest, the file is
never loaded whole: one csv-aware pass records where each row starts (quoted captions may span lines), the
offsets are cached (:mod:`declip.data.offsets`) and ``load(i)`` parses row ``i`` alone.

Index order: sample ``i`` is data row ``i + 1`` (the header is row 0), in file order.

The file, ``data.root`` and the image paths may be URLs (:mod:`declip.storage`), as for the manifest.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from .. import storage
from .bounded import contained, filename_problem
from .decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, check_caption, decode_image, read_image_bytes
from .offsets import RecordFile, load_or_build, open_data
from ..errors import DataError
from .errors import BadSample, require_file
from .source_base import FetchThenDecode, ReopenAfterPickle

MULTILINE = 1  # index flag: some quoted field spans lines, so row numbers are not line numbers
_BLOCK = 1 << 16


class _Lines:
    """Binary lines -> str for csv.reader, remembering the byte position after the last line handed out."""

    def __init__(self, f):
        self.f, self.pos, self.count = f, 0, 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        raw = self.f.readline()
        if not raw:
            raise StopIteration
        self.pos += len(raw)
        self.count += 1
        return raw.decode("utf-8", errors="replace")


def scan_csv(path: Path, sep: str):
    """Index builder: start offset of every record (header first) then the end offset; flags say whether
    any record spans several lines."""
    info = {"lines": 0, "records": 0}

    def chunks():
        with open_data(path) as f:
            lines = _Lines(f)
            reader = csv.reader(lines, delimiter=sep)
            block = [0]
            for _ in reader:
                block.append(lines.pos)  # this record ends where the next one starts
                info["records"] += 1
                if len(block) >= _BLOCK:
                    yield np.asarray(block, dtype=np.int64)
                    block = []
            info["lines"] = lines.count
            yield np.asarray(block, dtype=np.int64)

    return chunks(), lambda: MULTILINE if info["lines"] != info["records"] else 0


class CsvSource(FetchThenDecode, ReopenAfterPickle):
    """Map-style source over a CSV/TSV: ``len()``, ``load(i) -> (RGB image, caption)``."""

    _transient = ("starts", "file")

    def __init__(self, path: str | Path, root: str | Path = "", image_key: str = "filepath",
                 caption_key: str = "title", separator: str = "\t", image_size: int | None = None,
                 index_dir: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 allow_outside_root: bool = False, max_bytes: int = DEFAULT_MAX_BYTES):
        self.path, self.root = storage.location(path), storage.location(root) if root else None
        self.max_bytes = max_bytes
        self.remote = storage.is_remote(path) or storage.is_remote(root)
        self.image_key, self.caption_key, self.sep = image_key, caption_key, separator
        self.image_size, self.index_dir = image_size, index_dir
        self.max_pixels, self.allow_outside_root = max_pixels, allow_outside_root
        require_file(self.path, "CSV file")
        self._open()
        header = self._row(-1) if len(self.starts) > 1 else []
        if header:
            header[0] = header[0].lstrip("\ufeff")
        missing = [(k, n) for k, n in ((image_key, "data.csv_image_key"), (caption_key, "data.csv_caption_key"))
                   if k not in header]
        if missing:
            raise DataError(
                f"{self.path}: no column {', '.join(f'{k!r} ({n})' for k, n in missing)}; header has {header} "
                f"(split with data.csv_separator={separator!r})")
        self.image_col, self.caption_col = header.index(image_key), header.index(caption_key)

    def _open(self) -> None:
        self.starts, self.flags = load_or_build(
            self.path, f"csv{ord(self.sep):x}", lambda p: scan_csv(p, self.sep), self.index_dir)
        self.file = RecordFile(self.path)

    def __len__(self) -> int:
        return max(0, len(self.starts) - 2)

    def key(self, index: int, full: bool = False) -> str:
        name = str(self.path) if full else storage.basename(self.path)
        if self.flags & MULTILINE:
            return f"{name}: row {index + 1}"
        return f"{name}:{index + 2}"  # line number: the header is line 1

    def _row(self, index: int) -> list[str]:
        """Fields of data row ``index`` (-1: the header)."""
        raw = self.file.read(int(self.starts[index + 1]), int(self.starts[index + 2]))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadSample("bad_line", f"{self.key(index, full=True)}: not UTF-8 ({e.reason})") from None
        return next(csv.reader(io.StringIO(text), delimiter=self.sep), [])

    def fetch(self, index: int) -> tuple[str, str, bytes]:
        """The I/O of sample ``index``: (caption, image name, image bytes), within ``data.max_image_bytes``."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: row {index + 1} of {len(self)}")
        where = self.key(index, full=True)
        row = self._row(index)
        need = max(self.image_col, self.caption_col) + 1
        if len(row) < need:
            raise BadSample("bad_line", f"{where}: {len(row)} fields, the header needs {need}")
        caption = check_caption(row[self.caption_col], where)
        name = row[self.image_col]
        why = filename_problem(name)
        if why:
            raise BadSample("bad_line", f"{where}: {self.image_key!r} {why}")
        # without data.root the paths are used as written (open_clip's CSVs): there is no root to stay in
        path = contained(self.root, name, self.allow_outside_root, where) if self.root else storage.location(name)
        return caption, str(path), read_image_bytes(path, self.max_bytes)

    def decode(self, index: int, fetched: tuple[str, str, bytes]) -> tuple[Image.Image, str]:
        caption, name, data = fetched
        return decode_image(data, name, self.image_size, max_pixels=self.max_pixels), caption
