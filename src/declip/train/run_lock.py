"""One run per output folder: an OS file lock on ``<train.output_dir>/.lock``, held for the life of the run.

Two runs writing one folder (a job array with a fixed folder, a job re-submitted while the first still runs)
would interleave their metrics and checkpoints, so that a later ``--resume latest`` continues a mix. The lock is
``fcntl.flock`` on an open file: the kernel drops it when the process ends, however it ends (kill -9 included),
so there is never a stale lock to remove by hand. The holder writes its pid, host and start time into the file,
and a run refused at the door names them.

Only global rank 0 writes the folder, so only rank 0 takes the lock (see ``run_dir.claim_output_dir``). Forked
loader workers share the lock's open file; they end with their parent, and releasing it releases it for all.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ..errors import RunDirError

LOCK_NAME = ".lock"


def make_output_dir(directory: Path) -> None:
    """``mkdir -p`` with the key named when the path (or a parent) is a file (the OS says only 'File exists') or
    cannot be created."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        blocker = next((p for p in (directory, *directory.parents) if p.is_file()), directory)
        raise RunDirError(f"train.output_dir={directory}: {blocker} is a file, not a folder; choose another "
                          "train.output_dir or move the file away") from e
    except OSError as e:  # a read-only file system, no permission, a full disk
        raise RunDirError(f"train.output_dir={directory}: cannot create {e.filename or directory} "
                          f"({e.strerror or e}): make its parent folder writable or choose another "
                          "train.output_dir") from None


def holder_info() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _describe_holder(path: Path) -> str:
    """The holder as written in the lock file; it writes just after locking, so an empty read is retried."""
    for _ in range(20):
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "holder unknown"


class RunLock:
    """An exclusive, non-blocking lock on ``directory/.lock``; :meth:`release` (or the process ending) frees it."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        make_output_dir(self.path.parent)
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(f"train.output_dir={self.path.parent} is in use by another run "
                              f"({_describe_holder(self.path)}): wait for it to end, or choose another "
                              "train.output_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder_info()).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def _open(self) -> int:
        """The lock file, opened for writing; a folder in its place or a folder that cannot be written (read-only,
        no permission) as one line naming the file and the key."""
        key = f"train.output_dir={self.path.parent}"
        if self.path.is_dir():
            raise RunDirError(f"{key}: {self.path} is a folder (the run's lock file has that name): remove or "
                              "rename it, or choose another train.output_dir")
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(f"{key}: cannot write {self.path} ({e.strerror or e}): the run writes its lock, "
                              "log, metrics and checkpoints there; make the folder writable or choose another "
                              "train.output_dir") from None

    def release(self) -> None:
        """Idempotent. The file stays: removing it would let a third run lock a new file while a second still
        waits on the old one."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None
