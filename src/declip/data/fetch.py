"""Reading a DataLoader so that no worker can stall the reader, wherever it stops (issue 39).

Why a thread: torch's ``DataLoader(timeout=...)`` bounds only the wait for a batch's message. A worker stopped
(SIGSTOP, a debugger, a node swapping to death) after sending that message but before handing over the batch's
shared memory leaves the reading process blocked in the socket read that fetches each tensor's file descriptor
(torch's ``file_descriptor`` sharing strategy): no timeout covers it, and a signal handler can note a request but
nothing follows. So :class:`BoundedFetch` runs ``next()`` on the loader's iterator on a fetch thread, one batch
per request, while the caller's thread waits for the answer with a deadline it can act on.

What runs where, and why it stays deterministic: the fetch thread only runs the loader's iterator (it receives
and unpickles a batch: no model, optimizer or random generator), and only while the caller waits for it, so
batches arrive in the loader's order with the loader's contents, as without the thread. The caller (the main
thread) keeps the signal handlers, the model, the optimizer and the checkpoint. With no worker processes
(``num_workers=0``) the caller loads the samples itself (each read bounded by ``data.sample_timeout_s``): there
is no worker to stop, and no thread. The trainer's side (steps, signals, the save): :mod:`declip.train.watchdog`.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from .errors import DataStallError
from .loader import stall_error

PREEMPTION_WAIT_S = 10.0  # after a signal: a batch still not here this long after it is given up on (the step
# it was for is left to the resumed run), so the checkpoint is written well within SLURM's --signal=USR1@120
POLL_S = 0.5  # how often the waiting main thread looks at the clock and the signal flag


class PreemptedWait(DataStallError):
    """A preemption signal came while the run waited for data, and no batch followed in time."""


class BoundedFetch:
    """The loader's batches, fetched on a thread the main thread waits for with a deadline (see the module).

    ``per_step``: micro-batches per step (``train.grad_accum``): the first call of a step fetches them all.
    ``preempted()``: whether a preemption signal asks this process to save (False where it cannot save alone).
    """

    def __init__(self, iterator: Iterator, timeout_s: float, sample_timeout_s: float, per_step: int,
                 preempted: Callable[[], bool], threaded: bool = True):
        self.it, self.timeout_s, self.sample_timeout_s = iterator, timeout_s, sample_timeout_s
        self.per_step, self.preempted = per_step, preempted
        self.ready: deque = deque()
        self.stalled = False  # a fetch was given up on: the loader may be stuck mid-handover
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = None
        if threaded:
            self.thread = threading.Thread(target=self._serve, name="declip-fetch", daemon=True)
            self.thread.start()

    def _serve(self) -> None:
        """The fetch thread: one ``next()`` per request; errors go to the caller (daemon: a fetch stuck for
        good never holds up the interpreter's exit)."""
        while self.requests.get():
            try:
                self.results.put((True, next(self.it)))
            except BaseException as e:  # StopIteration included: raised where the caller asked
                self.results.put((False, e))

    def __iter__(self):
        return self

    def __next__(self):
        if not self.ready:  # a step's first micro-batch: fetch the step's every micro-batch now
            for _ in range(self.per_step):  # a loop, not a generator: StopIteration must reach the caller
                self.ready.append(self._fetch())
        return self.ready.popleft()

    def _fetch(self):
        if self.thread is None:
            return next(self.it)
        if self.stalled:  # the thread is still inside the fetch that was given up on
            raise self._stall()
        self.requests.put(True)
        start = time.monotonic()
        signalled = None  # when this wait first saw a preemption signal
        while True:
            try:
                ok, value = self.results.get(timeout=POLL_S)
            except queue.Empty:
                now = time.monotonic()
                if signalled is None and self.preempted():
                    signalled = now
                if signalled is not None and now - signalled >= PREEMPTION_WAIT_S:
                    self.stalled = True
                    raise PreemptedWait(f"no batch from the data-loader workers within {PREEMPTION_WAIT_S:g} s "
                                        "of the preemption signal: the step it was for is left to the resumed run")
                if now - start >= self.timeout_s:
                    self.stalled = True
                    raise self._stall()
                continue
            if ok:
                return value
            stall = stall_error(value, self.timeout_s, self.sample_timeout_s) \
                if isinstance(value, RuntimeError) else None
            if stall is not None:  # torch's own timeout (a worker stopped before sending): the same one line
                self.stalled = True
                raise stall from None
            raise value

    def _stall(self) -> DataStallError:
        return stall_error(None, self.timeout_s, self.sample_timeout_s)

    def close(self) -> None:
        """Stop the loader's workers and the fetch thread. After a stall the workers are killed at once (their
        pids forgotten first, so torch does not report their end as a crash): torch's orderly shutdown would wait
        for a stopped worker, and for a reader thread that may never return."""
        if self.stalled:
            abandon_loader(self.it)
        elif hasattr(self.it, "_shutdown_workers"):  # torch's own: it also forgets the worker pids
            self.it._shutdown_workers()
        if self.thread is not None:
            self.requests.put(False)  # it ends once its fetch returns (a stuck one: with the process)
            if not self.stalled:
                self.thread.join(timeout=5)


def abandon_loader(iterator) -> None:
    """End a stalled loader iterator's workers at once (:class:`BoundedFetch`): their pids forgotten first
    (torch's SIGCHLD handler would report the kill as a crash), the iterator marked shut down (torch's own
    shutdown, also run when it is collected, would join a reader thread that may be stuck in a stopped worker's
    socket for good), then killed: SIGKILL is the one signal a stopped process acts on. A reader stuck on that
    socket then fails; a pinned-memory thread's failure is not printed (the run says why it stopped)."""
    from torch.utils.data import _utils

    if getattr(iterator, "_worker_pids_set", False):
        _utils.signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False
    iterator._shutdown = True
    for event in ("_workers_done_event", "_pin_memory_thread_done_event"):
        if hasattr(iterator, event):
            getattr(iterator, event).set()
    pin = getattr(iterator, "_pin_memory_thread", None)
    if pin is not None:
        _silence(pin)
    for proc in getattr(iterator, "_workers", []):
        proc.kill()
        proc.join(timeout=5)


def _silence(thread) -> None:
    """Drop an uncaught exception of this one thread (a traceback after the run's one-line reason)."""
    previous = threading.excepthook

    def hook(args):
        if args.thread is not thread:
            previous(args)

    threading.excepthook = hook
