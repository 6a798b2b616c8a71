"""Reads that cannot hang the caller, and filenames that cannot leave their root.

Why a helper thread: a read from a hung network mount (NFS with ``hard``, the default) sleeps in the kernel and
is woken neither by O_NONBLOCK (it means nothing for regular files) nor by a signal short of SIGKILL. No thread
can interrupt it, but the caller need not wait for it: :func:`call_bounded` runs the read and decode on a helper
thread of the calling thread and gives up after ``timeout_s``, skipping the sample as ``timeout``. The stuck
helper is abandoned (it exits if its read ever returns) and the next call gets a fresh one. So what is bounded is
the caller's wait, not the kernel's: after :data:`MAX_STUCK` reads that never returned, the file system is taken
as hung and :class:`DataStallError` stops the run instead of piling up stuck threads. "Never returned" is
checked, not assumed: with a short timeout (``data check --timeout 0.01``) reads that are merely slow are
abandoned as often, so the oldest one is given :data:`STALL_GRACE_S` (or the timeout, if longer) more to return;
if it does, the samples stay ``timeout`` skips and the work goes on.

The handoff costs one queue round trip (tens of microseconds) against milliseconds of decoding per sample.
A FIFO in place of an image never reaches a blocking read: :func:`declip.data.decode.read_image_bytes` opens
with O_NONBLOCK and skips anything that is not a regular file as ``not_a_file``.
"""
from __future__ import annotations

import os
import posixpath
import queue
import threading
from pathlib import Path
from typing import Callable, TypeVar

from .. import storage
from .errors import BadSample, DataStallError

T = TypeVar("T")
MAX_STUCK = 4  # reads of one process that never returned before the file system counts as hung
STALL_GRACE_S = 10.0  # what the oldest of them gets on top of the timeout to prove itself slow, not hung
_local = threading.local()
_abandoned: list[threading.Thread] = []
_abandoned_lock = threading.Lock()


class _Helper:
    """One daemon thread running the jobs of one calling thread, in order (daemon: a stuck one never blocks
    the interpreter's exit)."""

    def __init__(self):
        self.pid = os.getpid()  # a helper inherited through fork has no thread behind it
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="declip-read", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                self.results.put((True, job()))
            except BaseException as e:  # handed to the caller, raised there
                self.results.put((False, e))


def _stuck_threads(new: threading.Thread) -> int:
    with _abandoned_lock:
        _abandoned.append(new)
        _abandoned[:] = [t for t in _abandoned if t.is_alive()]
        return len(_abandoned)


def _oldest_returns(grace_s: float) -> bool:
    """Whether the oldest abandoned read still alive returns within ``grace_s``: slow, not hung."""
    with _abandoned_lock:
        oldest = next((t for t in _abandoned if t.is_alive()), None)
    if oldest is not None:
        oldest.join(grace_s)
    return oldest is None or not oldest.is_alive()


def call_bounded(fn: Callable[[], T], timeout_s: float, where: str | Callable[[], str],
                 knob: str = "data.sample_timeout_s", then: str = "resume with --resume latest") -> T:
    """``fn()``, or :class:`BadSample` ``timeout`` if it has not returned after ``timeout_s`` seconds.
    ``where`` names the sample (e.g. FILE:LINE), or is a callable giving the name, only called on a timeout
    (a shard's key costs a read). Exceptions of ``fn`` are raised here. ``knob`` (the setting that gave
    ``timeout_s``) and ``then`` (what to do once the mount is fixed) word the messages for the caller: a run
    resumes, ``data check`` runs again."""
    helper = getattr(_local, "helper", None)
    if helper is None or helper.pid != os.getpid():
        helper = _local.helper = _Helper()
    helper.jobs.put(fn)
    try:
        ok, value = helper.results.get(timeout=timeout_s)
    except queue.Empty:
        helper.jobs.put(None)  # it exits once (if ever) the stuck call returns
        _local.helper = None
        where = where() if callable(where) else where
        stuck = _stuck_threads(helper.thread)
        grace = max(timeout_s, STALL_GRACE_S)
        if stuck >= MAX_STUCK and not _oldest_returns(grace):
            raise DataStallError(
                f"{stuck} reads have not returned after {knob}={timeout_s:g} s, the oldest not in {grace:g} s more "
                f"(the latest: {where}): the file system looks hung; check the mount, then {then}") from None
        raise BadSample("timeout", f"{where}: not read and decoded within {knob}={timeout_s:g} s") from None
    if ok:
        return value
    raise value


def filename_problem(name) -> str | None:
    """Why ``name`` (a manifest's ``filename``, a CSV's image column) cannot name a file; None when it can.

    Every reader asks this where a line of user data becomes a path (the caption and labelled manifests, the
    CSV, ``declip eval``'s manifests), so such a line is one ``bad_line`` there: a NUL byte would otherwise reach
    ``open()`` and stop the run with ``ValueError: embedded null byte``."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if "\0" in name:
        return f"holds a NUL byte ({name!r}): no file name can"
    return None


def contained(root, filename: str, allow_outside: bool, where: str):
    """``root / filename`` (a URL string under a remote root such as ``s3://bucket/prefix``), or
    :class:`BadSample` ``outside_root`` for an absolute filename (or a URL) or one whose ``..`` climb out of
    ``root`` (a shared manifest must not make a job read any file the job can read).

    The check is on the text of the name (no file system call, so no cost per sample): a symbolic link inside
    the root that points elsewhere is followed, as data sets built from links need. ``allow_outside`` (the
    ``data.allow_outside_root`` key) takes the name as it is, for manifests that really hold absolute paths
    (or whole URLs).
    """
    remote = storage.is_remote(root)
    if allow_outside and storage.is_remote(filename):
        return filename
    if not allow_outside:
        sep, norm = (posixpath.sep, posixpath.normpath(filename)) if remote else (os.sep, os.path.normpath(filename))
        if os.path.isabs(filename) or storage.is_remote(filename) or norm == ".." or norm.startswith(".." + sep):
            raise BadSample("outside_root", f"{where}: {filename!r} is outside the root {root} (absolute or "
                            "'..'); if the manifest means it, set data.allow_outside_root=true (data check: "
                            "--allow-outside-root)")
    return storage.join(root, filename) if remote else Path(root) / filename
