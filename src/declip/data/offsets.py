"""Byte-offset indexes for record files too large to hold in memory (a 15M-line, 3.3 GB manifest).

A file-backed source keeps one int64 array ``starts`` with ``len = records + 1``: record ``i`` is the bytes
``[starts[i], starts[i + 1])``, read with one ``pread``. The array is built in a single pass and cached as
``<file>.<kind>.idx.npy`` beside the file, or, where that folder is read-only, in ``index_dir`` /
``$DECLIP_INDEX_DIR`` / ``~/.cache/declip/index`` / the temp dir. The cache is memory-mapped, so forked data
workers share its pages.

What a cache is keyed on: the file's size, mtime and a digest of its content (:func:`content_key`: all of a file
up to 4 MiB, else its head, tail and 62 blocks spread over it, 4 MiB read in all), so a same-size edit with the
mtime put back is still seen (issue 38.4). An edit the sampled blocks miss can only matter where it moves a
record boundary, and the manifest reader checks the boundaries of every line it reads (:mod:`declip.data.manifest`).
A remote object (``s3://``, ``gs://``, ``http(s)://``) is keyed on its identity instead (ETag, else size and
modification time; :func:`declip.storage.identity`), and its index lives in the local cache folders only.

Cache layout: ``[MAGIC, size, mtime_ns, content key, flags, starts...]`` in one .npy array of int64.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

log = logging.getLogger(__name__)

from .. import storage

MAGIC = 0x4445434C49500002  # "DECLIP" + format version 2 (version 1 had no content key: such caches are rebuilt)
HEADER = 5
CHUNK = 1 << 23  # 8 MiB of the file per read while scanning
WHOLE = 1 << 22  # files up to 4 MiB are hashed whole
BLOCK = 1 << 16  # else 64 blocks of 64 KiB: the first, the last and 62 spread evenly between them
BLOCKS = 64


def _cache_dirs(index_dir: str | None) -> list[Path]:
    dirs = [Path(index_dir)] if index_dir else []
    if os.environ.get("DECLIP_INDEX_DIR"):
        dirs.append(Path(os.environ["DECLIP_INDEX_DIR"]))
    dirs += [Path.home() / ".cache" / "declip" / "index", Path(tempfile.gettempdir()) / "declip-index"]
    return dirs


def cache_candidates(path, kind: str, index_dir: str | None = None) -> list[Path]:
    """Where the index of ``path`` may live, in the order they are tried (a remote object's: the local ones)."""
    if storage.is_remote(path):
        tag = hashlib.sha1(str(path).encode()).hexdigest()[:16]
        return [d / f"{tag}-{storage.basename(path)}.{kind}.idx.npy" for d in _cache_dirs(index_dir)]
    path = Path(path).resolve()
    beside = path.with_name(f"{path.name}.{kind}.idx.npy")
    tag = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    away = [d / f"{tag}-{path.name}.{kind}.idx.npy" for d in _cache_dirs(index_dir)]
    return away[:1] + [beside] + away[1:] if index_dir else [beside] + away


def content_key(path: Path, size: int) -> int:
    """A signed 64-bit digest of ``path``'s content: all of it up to :data:`WHOLE` bytes, else :data:`BLOCKS`
    blocks of :data:`BLOCK` bytes at evenly spread offsets (the head and the tail among them). About 4 MiB read
    at most, so a 3.3 GB manifest costs 64 preads to open, not a full read (benchmarks/manifest_memory.py)."""
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        if size <= WHOLE:
            h.update(f.read())
        else:
            fd = f.fileno()
            for k in range(BLOCKS):
                h.update(os.pread(fd, BLOCK, (size - BLOCK) * k // (BLOCKS - 1)))
    return int.from_bytes(h.digest(), "little", signed=True)


def _stamp(path) -> tuple[int, int, int]:
    """(size, mtime_ns, content key) of a local file; (size, 0, identity key) of a remote object."""
    if storage.is_remote(path):
        meta = storage.info(str(path))
        return int(meta["size"]), 0, storage.identity_key(storage.identity(str(path), meta))
    st = path.stat()
    return st.st_size, st.st_mtime_ns, content_key(path, st.st_size)


def _load(cache: Path, stamp: tuple[int, int, int]) -> tuple[np.ndarray, int] | None:
    """The cached index if ``cache`` holds one for this exact file, else None. A cache is disposable: any failure
    to read it (missing, empty - np.load raises EOFError -, truncated, another format) is a miss and the index is
    rebuilt, never an error of the run."""
    try:
        arr = np.load(cache, mmap_mode="r")
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - see the docstring
        log.debug("ignoring unreadable index cache %s (%s: %s)", cache, type(e).__name__, e)
        return None
    if arr.dtype != np.int64 or arr.ndim != 1 or len(arr) < HEADER + 1:
        return None
    if int(arr[0]) != MAGIC or (int(arr[1]), int(arr[2]), int(arr[3])) != stamp:
        return None
    return arr[HEADER:], int(arr[4])


class _ScanFailed(Exception):
    """Reading the data file failed (as opposed to writing the cache): no other cache place will help."""


def _guard(chunks: Iterable[np.ndarray]):
    it = iter(chunks)
    while True:
        try:
            c = next(it)
        except StopIteration:
            return
        except OSError as e:
            raise _ScanFailed() from e
        yield c


def _write(cache: Path, stamp: tuple[int, int, int], flags, chunks: Iterable[np.ndarray]) -> None:
    """Stream int64 chunks to a raw temp file, then copy them into the .npy (bounded memory), atomically."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    raw = cache.with_name(f".{cache.name}.{os.getpid()}.{threading.get_ident()}.raw")
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.{threading.get_ident()}.tmp.npy")
    try:
        n = 0
        with open(raw, "wb") as f:
            for c in chunks:
                f.write(np.ascontiguousarray(c, dtype=np.int64).tobytes())
                n += len(c)
        flags = flags() if callable(flags) else flags  # known once the scan is done
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int64, shape=(HEADER + n,))
        out[:HEADER] = (MAGIC, *stamp, flags)
        step = CHUNK // 8
        with open(raw, "rb") as f:
            for lo in range(0, n, step):
                block = np.frombuffer(f.read(min(step, n - lo) * 8), dtype=np.int64)
                out[HEADER + lo : HEADER + lo + len(block)] = block
        out.flush()
        del out
        os.replace(tmp, cache)
    finally:
        for p in (raw, tmp):
            if p.exists():
                p.unlink()


def load_or_build(path, kind: str, build: Callable[[Path], tuple[Iterable[np.ndarray], object]],
                  index_dir: str | None = None, rebuild: bool = False) -> tuple[np.ndarray, int]:
    """``(starts, flags)`` for ``path``: a cached index if one matches the file, else ``build(path)``.

    ``build`` returns ``(chunks of record starts ending with the end offset, flags)``; the chunks are consumed
    once, while being written, so they may come from a generator reading the file lazily; ``flags`` is an int
    or a callable evaluated after the chunks are consumed (for facts learnt during the scan). ``path`` may be a
    remote URL (str); ``rebuild`` skips the caches (a reader found the cached index stale).
    """
    path = path if storage.is_remote(path) else Path(path)
    stamp = _stamp(path)
    candidates = cache_candidates(path, kind, index_dir)
    for cache in [] if rebuild else candidates:
        found = _load(cache, stamp)
        if found is not None:
            return found
    chunks, flags = build(path)
    errors = []
    for cache in candidates:
        try:
            _write(cache, stamp, flags, _guard(chunks))
        except _ScanFailed as e:
            raise e.__cause__ from None
        except OSError as e:  # read-only folder, full disk: try the next place
            errors.append(f"{cache.parent}: {e.strerror or e}")
            chunks, flags = build(path)
            continue
        found = _load(cache, stamp)
        if found is not None:
            log.info("indexed %s: %d records -> %s", path, len(found[0]) - 1, cache)
            return found
    raise OSError(f"cannot write an index for {path} anywhere: {'; '.join(errors)}")


def open_data(path, block_size: int = CHUNK):
    """A binary file object over a local file or a remote object (read sequentially by the index scans)."""
    return storage.open_file(str(path), block_size) if storage.is_remote(path) else open(path, "rb")


def data_size(path) -> int:
    return storage.size(str(path)) if storage.is_remote(path) else Path(path).stat().st_size


def scan_lines(path) -> Iterable[np.ndarray]:
    """Start offsets of every line (blank ones included, so record i is line i + 1), then the end offset.
    A last line without a trailing newline still counts; an empty file has no records."""
    size = data_size(path)
    yield np.zeros(1, dtype=np.int64)
    pos = 0
    with open_data(path) as f:
        while True:
            buf = f.read(CHUNK)
            if not buf:
                break
            nl = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == 10)
            starts = nl.astype(np.int64) + (pos + 1)
            if len(starts) and starts[-1] == size:
                starts = starts[:-1]  # the newline ending the file starts no line
            yield starts
            pos += len(buf)
    if size:
        yield np.array([size], dtype=np.int64)


class RecordFile:
    """pread-based random access to byte ranges; safe across threads and forked workers, picklable. A remote
    object (URL) is read with one ranged GET per call, on this process's reused connection pool."""

    def __init__(self, path: str | Path):
        self.remote = storage.is_remote(path)
        self.path = str(path) if self.remote else Path(path)
        self._fd: int | None = None
        self._pid = -1
        self._lock = threading.Lock()

    def read(self, start: int, end: int) -> bytes:
        if self.remote:
            return storage.read_range(self.path, start, end)
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        if hasattr(os, "pread"):
            return os.pread(self._fd, end - start, start)
        with self._lock:  # pragma: no cover - platforms without pread
            os.lseek(self._fd, start, os.SEEK_SET)
            return os.read(self._fd, end - start)

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass
