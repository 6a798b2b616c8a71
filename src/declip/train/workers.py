"""The loader workers' lifetime: they outlive neither a preemption save nor a fatal error."""
from __future__ import annotations

import multiprocessing
import signal
import threading


def ignore_preemption_in_worker(chained, worker_id: int) -> None:
    """worker_init_fn: data-loader workers ignore SIGTERM/SIGUSR1/SIGINT. Preemption signals (and Ctrl-C) reach
    the whole process group; a worker that died of one would make the trainer fail with "DataLoader worker is
    killed by signal" before it can save (or say "interrupted"). The trainer owns the workers' lifetime:
    :func:`stop_loader_workers`."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    if chained is not None:
        chained(worker_id)


def stop_loader_workers() -> None:
    """Kill this process's daemon children (the loader workers). They ignore SIGTERM (above), so after a
    fatal error Python's exit would terminate() them and then wait for them forever."""
    for proc in multiprocessing.active_children():
        if proc.daemon:
            proc.kill()
            proc.join(timeout=5)


def abandon_loader(iterator) -> None:
    """End a stalled loader iterator's workers at once (:class:`declip.train.watchdog.BoundedFetch`): its pids
    forgotten first (torch's SIGCHLD handler would report the kill as a crash), marked shut down (torch's own
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
