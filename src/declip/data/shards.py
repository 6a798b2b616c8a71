"""webdataset shards as img2dataset writes them, read map-style so resume and rank sharding stay exact.

A shard is an uncompressed tar whose members are grouped by key (the member path up to the first dot of its
base name, webdataset's rule): ``000000012.jpg``, ``000000012.txt`` and/or ``000000012.json`` (caption under
``"caption"``). Streaming readers (webdataset.WebDataset) cannot seek, so a resumed or resharded run would
not see exactly the samples it should; instead each shard's tar headers are read once (no image data), the
byte span of every sample is cached as an offset index (:mod:`declip.data.offsets`), and ``load(i)`` reads
one span with a single ``pread`` and parses it. (``wids``, webdataset's own indexed reader, is not shipped
with the installed webdataset 1.0.2.)

``data.path`` is a brace pattern (``/data/shards/{00000..00099}.tar``), several joined with ``::``, a single
tar, or a folder (its ``*.tar`` in sorted order). Each may be a URL (``s3://bucket/shards/{00000..00099}.tar``,
``gs://...``, ``https://...``; :mod:`declip.storage`): the tar headers are then read once through the object
store (the index cached locally, keyed on each object's ETag) and a sample is one ranged GET.

A sample whose span in the shard (known from the tar headers, before any read) exceeds ``data.max_image_bytes``
plus :data:`TEXT_SLACK` for its caption members is skipped as ``too_large`` without being read.

Index order: shards in the order the pattern lists them, and samples in tar order within each shard.
"""
from __future__ import annotations

import io
import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from braceexpand import braceexpand
from PIL import Image

from .. import storage
from .decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, check_caption, decode_image
from .offsets import RecordFile, load_or_build, open_data
from ..errors import DataError
from .errors import BadSample
from .source_base import FetchThenDecode, ReopenAfterPickle

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff")  # first present wins
TEXT_SLACK = 1 << 20  # a sample's span may exceed data.max_image_bytes by this much (tar headers, .txt, .json)


def split_key(name: str) -> tuple[str, str]:
    """``a/b/000012.jpg`` -> (``a/b/000012``, ``jpg``); ``000012.seg.png`` -> (``000012``, ``seg.png``)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _expand_remote(item: str, pattern: str) -> list[str]:
    """One expanded URL: a ``.tar`` object, or a prefix whose ``*.tar`` objects are taken in sorted order."""
    if item.endswith(".tar"):
        return [item]
    storage.require_bucket(item, "data.path")
    found = storage.glob(storage.join(item, "*.tar"))
    if not found:
        raise DataError(f"data.path: {item} holds no *.tar shards (pattern {pattern!r})")
    return found


def _missing_remote(urls: list[str]) -> list[str]:
    """The URLs that name no object: one listing per folder (prefix), not one request per shard."""
    if not urls:
        return []
    storage.require_bucket(urls[0], "data.path")
    listed: dict[str, set[str]] = {}
    missing = []
    for url in urls:
        folder = url.rsplit("/", 1)[0]
        if folder not in listed:
            listed[folder] = set(storage.glob(storage.join(folder, "*")))
        if url not in listed[folder]:
            missing.append(url)
    return missing


def expand_shards(pattern: str) -> list[Path | str]:
    """Shard paths (URLs as strings) named by ``pattern``, in order; a clear error for a missing shard or an
    empty folder."""
    paths: list[Path | str] = []
    for part in pattern.split("::"):
        for item in braceexpand(part.strip()):
            if storage.is_remote(item):
                paths += _expand_remote(item, pattern)
                continue
            p = Path(item).expanduser()
            if p.is_dir():
                found = sorted(p.glob("*.tar"))
                if not found:
                    raise DataError(f"data.path: folder {p} holds no *.tar shards")
                paths += found
            else:
                paths.append(p)
    missing = [p for p in paths if not storage.is_remote(p) and not p.is_file()]
    missing += _missing_remote([p for p in paths if storage.is_remote(p)])
    if missing:
        raise DataError(f"data.path={pattern!r}: {len(missing)} of {len(paths)} shards missing, "
                                f"e.g. {missing[0]}")
    if not paths:
        raise DataError(f"data.path={pattern!r} names no shards")
    return paths


def scan_tar(path):
    """Index builder: header offset of the first member of each sample, then the end of the last member."""
    starts: list[int] = []
    end, prev = 0, None
    try:
        with open_data(path, 1 << 20) as f, tarfile.open(fileobj=f, mode="r:") as tf:  # members skipped by seeking
            for m in tf:
                if not m.isfile():
                    continue
                key, _ = split_key(m.name)
                if key != prev:
                    starts.append(m.offset)
                    prev = key
                end = m.offset_data + -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    except tarfile.ReadError as e:
        raise DataError(f"{path}: not an uncompressed tar ({e}); shards must be plain .tar for random "
                         "access") from None
    return [np.asarray([*starts, end], dtype=np.int64)], 0


class ShardSource(FetchThenDecode, ReopenAfterPickle):
    """Map-style source over webdataset shards: ``len()``, ``load(i) -> (RGB image, caption)``."""

    _transient = ("first", "base", "starts", "files")

    def __init__(self, pattern: str, image_size: int | None = None, index_dir: str | None = None,
                 index_threads: int = 8, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES):
        self.pattern, self.image_size, self.index_dir = pattern, image_size, index_dir
        self.max_pixels, self.max_bytes = max_pixels, max_bytes
        self.shards = expand_shards(pattern)
        self.remote = any(storage.is_remote(p) for p in self.shards)
        self.index_threads = index_threads
        self._open()

    def _open(self) -> None:
        def one(p) -> np.ndarray:
            return np.asarray(load_or_build(p, "samples", scan_tar, self.index_dir)[0])

        with ThreadPoolExecutor(max(1, min(self.index_threads, len(self.shards)))) as pool:
            per_shard = list(pool.map(one, self.shards))
        counts = np.array([len(s) - 1 for s in per_shard], dtype=np.int64)
        self.first = np.concatenate([[0], np.cumsum(counts)])  # first sample index of each shard
        self.base = np.concatenate([[0], np.cumsum(counts + 1)])[:-1]  # where each shard's starts begin
        self.starts = np.concatenate(per_shard) if per_shard else np.zeros(0, np.int64)
        self.files = [RecordFile(p) for p in self.shards]

    def __len__(self) -> int:
        return int(self.first[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, sample number within the shard)."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.pattern}: sample {index} of {len(self)}")
        k = int(np.searchsorted(self.first, index, side="right")) - 1
        return k, index - int(self.first[k])

    def members(self, index: int) -> tuple[str, dict[str, bytes]]:
        """(key, {extension: bytes}) of sample ``index``."""
        k, j = self.locate(index)
        lo, hi = int(self.starts[self.base[k] + j]), int(self.starts[self.base[k] + j + 1])
        if hi - lo > self.max_bytes + TEXT_SLACK:  # the tar headers' sizes say so: nothing is read
            raise BadSample("too_large", f"{self.position(index)}: the sample spans {(hi - lo) / 2**20:.1f} MiB "
                                         f"of its shard > data.max_image_bytes={self.max_bytes} + 1 MiB of text")
        try:
            span = self.files[k].read(lo, hi)
        except (FileNotFoundError, PermissionError) as e:  # a remote shard removed or denied since indexing
            raise BadSample("missing_file", f"{self.position(index)}: {e}") from None
        key, files = None, {}
        with tarfile.open(fileobj=io.BytesIO(span), mode="r:") as tf:
            for m in tf:
                if m.isfile():
                    key, ext = split_key(m.name)
                    files[ext] = tf.extractfile(m).read()
        return key or "", files

    def position(self, index: int) -> str:
        """Where sample ``index`` is without reading the shard (a timed-out read may hang on it again)."""
        k, j = self.locate(index)
        return f"{storage.basename(self.shards[k])}: sample {j + 1}"

    def key(self, index: int) -> str:
        k, _ = self.locate(index)
        try:
            return f"{storage.basename(self.shards[k])}:{self.members(index)[0]}"
        except BadSample:  # too large or gone: its position names it without reading it
            return self.position(index)

    def _caption(self, files: dict[str, bytes], where: str):
        if "txt" in files:
            try:
                return files["txt"].decode("utf-8")
            except UnicodeDecodeError as e:
                raise BadSample("bad_line", f"{where}.txt: not UTF-8 ({e.reason})") from None
        if "json" in files:
            try:
                meta = json.loads(files["json"])
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise BadSample("bad_line", f"{where}.json: invalid JSON ({e})") from None
            if not isinstance(meta, dict) or "caption" not in meta:
                raise BadSample("bad_line", f"{where}.json: no 'caption' key")
            caption = meta["caption"]
            if isinstance(caption, list):
                caption = caption[0] if caption else ""
            return caption
        raise BadSample("bad_line", f"{where}: no .txt or .json caption (members: {sorted(files)})")

    def fetch(self, index: int) -> tuple[str, dict[str, bytes]]:
        """The I/O of sample ``index``: its members, read with one pread (one ranged GET for a URL)."""
        return self.members(index)

    def decode(self, index: int, fetched: tuple[str, dict[str, bytes]]) -> tuple[Image.Image, str]:
        k, _ = self.locate(index)
        key, files = fetched
        where = f"{self.shards[k]}:{key}"
        caption = check_caption(self._caption(files, where), where)
        ext = next((e for e in IMAGE_EXTS if e in files), None)
        if ext is None:
            raise BadSample("missing_file", f"{where}: no image member (members: {sorted(files)})")
        return decode_image(files[ext], f"{where}.{ext}", self.image_size, max_pixels=self.max_pixels), caption
