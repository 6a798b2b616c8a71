"""The loader workers' lifetime: they outlive neither a preemption save nor a fatal error."""
from __future__ import annotations

import multiprocessing
import signal


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
