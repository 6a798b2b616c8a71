"""The run folder's log and TensorBoard files when a write fails (a full disk, typically): one line naming the file.

Why a module of its own: Python's logging answers a failed write to ``train.log`` with a ``--- Logging error ---``
block and a traceback of 60-odd lines, for every record and again when the CLI hands the fatal error to the log;
and TensorBoard writes from a thread of its own, whose failure prints ``Exception in thread`` and then resurfaces
at the next scalar as an OS error that names no file. Here the log warns once and goes on on the console (the run
stops at its next metrics or checkpoint write, which names its file), and a TensorBoard failure is a
:class:`~declip.errors.RunDirError` naming the folder, with the way back that ``write_failure`` gives.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import threading
from pathlib import Path

from ..errors import RunDirError
from .checkpoint import write_failure

log = logging.getLogger("declip")


class RunLogFile(logging.FileHandler):
    """``train.log``: the first write that fails with an OS error prints one warning naming the file and turns
    the handler off (no ``--- Logging error ---``); any other error is a bug and keeps logging's report."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        try:  # FileHandler opens a closed stream again outside the try that routes write errors to handleError
            super().emit(record)
        except OSError:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)
            return
        if not self.failed:
            self.failed = True
            print(f"warning: cannot write {self.baseFilename} ({error.strerror or error}): the log goes on on the "
                  "console only", file=sys.stderr, flush=True)

    def flush(self) -> None:
        try:
            super().flush()
        except OSError:  # what could not be written is already reported
            self.failed = True

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            pass


def close_run_logs(failure: BaseException | None = None) -> None:
    """The end of a run: its ``train.log`` gets the failure's traceback (the console had the one line), then the
    handler is closed and removed, so that nothing later in the process (another ``declip.train``, a data check)
    writes into this run's log or into a folder that may be gone."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, RunLogFile)]:
        if failure is not None and not isinstance(failure, KeyboardInterrupt):
            handler.handle(logging.LogRecord("declip", logging.ERROR, __file__, 0, f"run failed: {failure}", None,
                                             (type(failure), failure, failure.__traceback__)))
        root.removeHandler(handler)
        handler.close()


def _quiet_tensorboard_threads() -> None:
    """TensorBoard's writer thread dies on an OS error and the interpreter prints its traceback; the same error
    is raised again in the training thread at the next scalar (:class:`Scalars`), so the thread's report is
    dropped. Any other thread's exception is reported as before."""
    previous = threading.excepthook
    if getattr(previous, "declip_quiet", False):
        return

    def hook(args):
        if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
            return
        previous(args)

    hook.declip_quiet = True
    threading.excepthook = hook


class Scalars:
    """TensorBoard scalars under ``folder``, a failed write raised as one line naming the folder."""

    def __init__(self, folder: Path, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.folder, self.failed = folder, False
        _quiet_tensorboard_threads()
        with self._named():
            self.writer = SummaryWriter(str(folder), purge_step=purge_step)

    @contextlib.contextmanager
    def _named(self):
        try:
            yield
        except OSError as e:
            self.failed = True
            raise RunDirError(write_failure(self.folder, e.strerror or str(e))) from e

    def add(self, tag: str, value: float, step: int) -> None:
        with self._named():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        try:
            self.writer.close()
        except OSError as e:
            if not self.failed:  # first seen here (the writer thread failed after the last scalar)
                log.warning("cannot write %s (%s): its last scalars are lost; metrics.jsonl has them",
                            self.folder, e.strerror or e)


def open_scalars(folder: Path, purge_step: int | None) -> Scalars | None:
    """TensorBoard scalars, or None (a warning) when tensorboard is not installed."""
    try:
        return Scalars(folder, purge_step)
    except ImportError:  # tensorboard is a dependency, but a missing one must not stop training
        log.warning("tensorboard is not installed; scalars go to metrics.jsonl only")
        return None
