"""Byte-offset indexes for record files too large to hold in memory (a 15M-line, 3.3 GB manifest).

A file-backed source keeps one int64 array ``starts`` with ``len = records + 1``: record ``i`` is the bytes
``[starts[i], starts[i + 1])``, read with one ``pread``. The array is built in a single pass and cached as
``<file>.<kind>.idx.npy`` beside the file, or, where that folder is read-only, in ``index_dir`` /
``$DECLIP_INDEX_DIR`` / ``~/.cache/declip/index`` / the temp dir. The cache is memory-mapped, so forked data
workers share its pages, and it is rebuilt whenever the file's size or mtime changes.

Cache layout: ``[MAGIC, file size, file mtime_ns, flags, starts...]`` in one .npy array of int64.
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

MAGIC = 0x4445434C49500001  # "DECLIP" + format version 1
HEADER = 4
CHUNK = 1 << 23  # 8 MiB of the file per read while scanning


def _cache_dirs(index_dir: str | None) -> list[Path]:
    dirs = [Path(index_dir)] if index_dir else []
    if os.environ.get("DECLIP_INDEX_DIR"):
        dirs.append(Path(os.environ["DECLIP_INDEX_DIR"]))
    dirs += [Path.home() / ".cache" / "declip" / "index", Path(tempfile.gettempdir()) / "declip-index"]
    return dirs


def cache_candidates(path: Path, kind: str, index_dir: str | None = None) -> list[Path]:
    """Where the index of ``path`` may live, in the order they are tried."""
    path = path.resolve()
    beside = path.with_name(f"{path.name}.{kind}.idx.npy")
    tag = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    away = [d / f"{tag}-{path.name}.{kind}.idx.npy" for d in _cache_dirs(index_dir)]
    return away[:1] + [beside] + away[1:] if index_dir else [beside] + away


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _load(cache: Path, stamp: tuple[int, int]) -> tuple[np.ndarray, int] | None:
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
    if int(arr[0]) != MAGIC or (int(arr[1]), int(arr[2])) != stamp:
        return None
    return arr[HEADER:], int(arr[3])


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


def _write(cache: Path, stamp: tuple[int, int], flags, chunks: Iterable[np.ndarray]) -> None:
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
        out[:HEADER] = (MAGIC, stamp[0], stamp[1], flags)
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


def load_or_build(path: str | Path, kind: str, build: Callable[[Path], tuple[Iterable[np.ndarray], object]],
                  index_dir: str | None = None) -> tuple[np.ndarray, int]:
    """``(starts, flags)`` for ``path``: a cached index if one matches the file, else ``build(path)``.

    ``build`` returns ``(chunks of record starts ending with the end offset, flags)``; the chunks are consumed
    once, while being written, so they may come from a generator reading the file lazily; ``flags`` is an int
    or a callable evaluated after the chunks are consumed (for facts learnt during the scan).
    """
    path = Path(path)
    stamp = _stamp(path)
    candidates = cache_candidates(path, kind, index_dir)
    for cache in candidates:
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


def scan_lines(path: Path) -> Iterable[np.ndarray]:
    """Start offsets of every line (blank ones included, so record i is line i + 1), then the end offset.
    A last line without a trailing newline still counts; an empty file has no records."""
    size = path.stat().st_size
    yield np.zeros(1, dtype=np.int64)
    pos = 0
    with open(path, "rb") as f:
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
    """pread-based random access to byte ranges; safe across threads and forked workers, picklable."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None
        self._pid = -1
        self._lock = threading.Lock()

    def read(self, start: int, end: int) -> bytes:
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
