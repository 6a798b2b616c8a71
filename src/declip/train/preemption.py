"""Preemption: a scheduler's SIGTERM (or SLURM's ``--signal=USR1``) asks the run to save and stop at the end of
the current step. Ranks get the signal at different moments, so the stop is agreed on the host every step: all
ranks stop at the same step and ``--resume latest`` continues exactly."""
from __future__ import annotations

import signal

from .. import distributed as dist
from .metrics import log

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionSignals:
    """``signum``: the signal that asked to stop (-1: another rank's), None while none did."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> None:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        """Leave the process as we found it (a notebook or a test runs several trainers in one process)."""
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum, _frame) -> None:
        log.warning("signal %d: saving a checkpoint at the end of this step, then exiting", signum)
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def agreed(self, world_size: int) -> bool:
        """True on every rank once any rank got a signal (one host-side flag exchange, no device wait)."""
        stop = self.requested
        if world_size > 1:
            stop = dist.any_rank(stop)
            if stop and self.signum is None:
                self.signum = -1  # another rank's signal: -1 keeps this rank out of the final eval/save
        return stop
