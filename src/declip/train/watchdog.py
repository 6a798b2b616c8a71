"""The data watchdog: no loader worker can stall the run, wherever it stops.

Why a thread: torch's ``DataLoader(timeout=...)`` bounds only the wait for a batch's message. A worker stopped
(SIGSTOP, a debugger, a node swapping to death) after sending that message but before handing over the batch's
shared memory leaves the main process blocked in the socket read that fetches each tensor's file descriptor
(torch's ``file_descriptor`` sharing strategy): no timeout covers it, and a preemption signal is noted by the
handler but nothing follows, so the scheduler's grace ends in SIGKILL. So the main thread never reads the
loader itself: :class:`BoundedFetch` runs ``next()`` on the loader's iterator on a fetch thread, one batch per
request, while the main thread waits for the answer with a deadline it can act on.

What runs where, and why it stays deterministic: the fetch thread only runs the loader's iterator (it receives
and unpickles a batch: no model, optimizer or random generator), and only while the main thread waits for it,
so batches arrive in the loader's order with the loader's contents, as without the thread. Signal handlers, the
model, the optimizer and the checkpoint stay with the main thread, which owns them. A step's micro-batches are
all fetched before its first one is used, so a wait given up is always at a step's start, before anything of
that step ran (no forward, no random draw, no BatchNorm or queue update): the state then saved is exactly the
last completed step's, and ``--resume latest`` continues as the uninterrupted run would have.

The main thread gives up waiting when
- the watchdog passes (``data.worker_timeout_s``; 0 = max(300, 10 x data.sample_timeout_s)):
  :class:`DataStallError`, one line, after a checkpoint if a preemption signal had asked for one;
- a preemption signal (SIGTERM / SIGUSR1) came and no batch followed within :data:`PREEMPTION_WAIT_S`:
  :class:`PreemptedWait`; the trainer saves the last completed step and stops as a preemption does (exit 0).
  One process only: under torchrun the other ranks could not join the save, so there the watchdog decides.
With ``data.num_workers=0`` the main process loads the samples itself (each read bounded by
``data.sample_timeout_s``): there is no worker to stop, and no thread.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from ..data.errors import DataStallError
from ..data.loader import stall_error
from .metrics import log

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
            self.ready.extend(self._fetch() for _ in range(self.per_step))
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
            if isinstance(value, RuntimeError):  # torch's own timeout (pinned memory): the same one line
                value = stall_error(value, self.timeout_s, self.sample_timeout_s) or value
            raise value

    def _stall(self) -> DataStallError:
        return stall_error(None, self.timeout_s, self.sample_timeout_s)

    def close(self) -> None:
        """Stop the loader's workers and the fetch thread. After a stall the workers are killed at once (their
        pids forgotten first, so torch does not report their end as a crash): torch's orderly shutdown would wait
        for a stopped worker, and for a reader thread that may never return."""
        from .workers import abandon_loader

        if self.stalled:
            abandon_loader(self.it)
        elif hasattr(self.it, "_shutdown_workers"):  # torch's own: it also forgets the worker pids
            self.it._shutdown_workers()
        if self.thread is not None and not self.stalled:
            self.requests.put(False)
            self.thread.join(timeout=5)


def stop_on_stall(trainer, consumed: int, error: DataStallError) -> bool:
    """The data stalled (or a signal's wait ran out: :class:`PreemptedWait`) at the start of a step, in the
    main thread. After a preemption signal, save the last completed step first (the unfinished step's
    micro-batches are given back to the stream). True: stop as a preemption does; False: raise ``error``.
    One process only: other ranks would not reach the save's barriers."""
    signals = trainer.preemption
    if not signals.requested or trainer.info.world_size > 1:
        return False
    trainer.consumed = consumed
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.save()
    if isinstance(error, PreemptedWait):
        log.warning("signal %d: %s", signals.signum, error)
        log.warning("stopped by signal %d at step %d; resume with --resume latest", signals.signum, trainer.step)
        return True
    log.warning("signal %d: saved a checkpoint at step %d before stopping on stalled data", signals.signum,
                trainer.step)
    return False
