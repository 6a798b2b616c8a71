"""The data watchdog in the training loop: no loader worker can stall the run, wherever it stops.

The main thread never reads the loader itself: :class:`declip.data.fetch.BoundedFetch` runs it on a fetch
thread while the main thread waits with a deadline (why: that module), so a worker stopped halfway through
handing a batch over, where torch's DataLoader timeout does not reach, no longer hangs the run and a preemption
signal still gets its checkpoint before the scheduler's SIGKILL. Signal handlers, the model, the optimizer and
the checkpoint stay with the main thread, which owns them. A step's micro-batches are all fetched before its
first one is used, so a wait given up is always at a step's start, before anything of that step ran (no forward, no random draw, no BatchNorm or queue update): the state then saved is exactly the
last completed step's, and ``--resume latest`` continues as the uninterrupted run would have.

The main thread gives up waiting when
- the watchdog passes (``data.worker_timeout_s``; 0 = max(300, 10 x data.sample_timeout_s)):
  :class:`DataStallError`, one line, after a checkpoint if a preemption signal had asked for one;
- a preemption signal (SIGTERM / SIGUSR1) came and no batch followed within ``declip.data.fetch.PREEMPTION_WAIT_S`` (10 s):
  :class:`PreemptedWait`; the trainer saves the last completed step and stops as a preemption does (exit 0).
  One process only: under torchrun the other ranks could not join the save, so there the watchdog decides.
With ``data.num_workers=0`` the main process loads the samples itself: no worker to stop, and no thread.
"""
from __future__ import annotations

from ..data.errors import DataStallError
from ..data.fetch import PreemptedWait
from .metrics import log


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
