"""The run's health checks, each a small object testable without building a trainer.

- :class:`SkipRateGuard`: the data is allowed a share of unusable samples (``data.max_skip_rate``); past it
  the run stops with the per-reason counts and the first ``file:line: reason`` examples, instead of quietly
  training on what is left. The first few skips of each reason are logged as they occur (then only counted),
  so a long run names its bad files without flooding the log.
- :class:`NonFiniteGuard`: a step whose loss or gradients hold NaN or inf is skipped (or stops the run with
  ``train.nonfinite=stop``); so many skips in a row that the run cannot be recovering
  (``train.max_nonfinite_skips``), or a non-finite value that reached a buffer (BatchNorm statistics, the NN
  queue: a skipped update cannot undo that), stop it, naming the step and the last good checkpoint.
- :class:`DeviceSkip`: the same skip decided on the device, for a fused AdamW (GradScaler's ``found_inf``
  approach): the optimizer leaves weights, moments and step count as they were when the flag is set, and the
  host reads the counts only where it acts on them (log, evaluation, checkpoint), not at every step.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn as nn

from ..data.errors import SKIP_REASONS
from ..errors import DataQualityError, NonFiniteError

MIN_SEEN = 200  # the skip rate is judged only once this many samples were drawn (a few bad files early on
# would otherwise stop a healthy run)
STOP_EXAMPLES = 5  # examples the stop message names
LOGGED_PER_REASON = 3  # skips of each reason logged as they occur; later ones are only counted
log = logging.getLogger("declip")


def reason_of(example: str) -> str:
    """The skip reason in a loader example ``"FILE:LINE: reason: detail"``."""
    return next((r for r in SKIP_REASONS if f": {r}: " in f": {example}"), "unknown")


class SkipRateGuard:
    def __init__(self, max_rate: float, counts: torch.Tensor | None = None):
        self.max_rate = max_rate
        self.counts = torch.zeros(len(SKIP_REASONS), dtype=torch.long)
        if counts is not None:  # a checkpoint written before later reasons were added holds fewer counts
            self.counts[: len(counts)] = counts.cpu()
        self.examples: list[str] = []  # the first examples of this process's run, for the stop message
        self.logged: Counter = Counter()

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def by_reason(self, nonzero: bool = True) -> dict[str, int]:
        return {r: int(c) for r, c in zip(SKIP_REASONS, self.counts) if c or not nonzero}

    def add(self, skips: torch.Tensor, consumed: int, examples: Iterable[str] = ()) -> None:
        """Count a batch's skips (and note its examples); raise once more than ``max_rate`` of all drawn
        samples were unusable."""
        self.counts += skips.cpu()
        for example in examples:
            self.note(example)
        bad = self.total
        seen = bad + consumed
        if seen >= MIN_SEEN and bad / seen > self.max_rate:
            shown = "; ".join(e.replace("\n", " ") for e in self.examples) or "none recorded"
            raise DataQualityError(
                f"{bad} of {seen} samples unusable ({100 * bad / seen:.1f}% > data.max_skip_rate="
                f"{100 * self.max_rate:.1f}%): {self.by_reason()}; e.g. {shown}; check the data with "
                "`declip data check`")

    def note(self, example: str) -> None:
        """Keep the first :data:`STOP_EXAMPLES` examples; log the first :data:`LOGGED_PER_REASON` of each reason."""
        if len(self.examples) < STOP_EXAMPLES:
            self.examples.append(example)
        reason = reason_of(example)
        if self.logged[reason] < LOGGED_PER_REASON:
            self.logged[reason] += 1
            last = self.logged[reason] == LOGGED_PER_REASON
            log.warning("skipped sample %s%s", example,
                        f" (further {reason} skips are counted, not logged)" if last else "")


def nonfinite_buffers(module: nn.Module) -> list[str]:
    """Names of floating buffers holding NaN or inf. Attention masks hold -inf by design and are skipped."""
    return [n for n, b in module.named_buffers() if b.is_floating_point() and not n.endswith("attn_mask")
            and not bool(torch.isfinite(b).all())]


def nonfinite_weights(state_dict: dict) -> list[str]:
    return [k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point()
            and not bool(torch.isfinite(v).all())]


class NonFiniteGuard:
    def __init__(self, policy: str, max_consecutive: int, total: int = 0):
        self.policy, self.max_consecutive = policy, max_consecutive
        self.total, self.consecutive = total, 0

    def ok(self) -> None:
        self.consecutive = 0

    def skipped(self, step: int, what: str, module: nn.Module, last_checkpoint: Path | None) -> None:
        """Account a skipped step; raise :class:`NonFiniteError` when the run must stop instead."""
        self.total += 1
        self.consecutive += 1
        self.check(step, what, module, last_checkpoint)

    def check(self, step: int, what: str, module: nn.Module, last_checkpoint: Path | None) -> None:
        resume = (f"last good checkpoint: {last_checkpoint} (resume with --resume latest, e.g. with a lower "
                  "optim.lr)" if last_checkpoint else "no checkpoint written yet")
        if self.policy == "stop":
            raise NonFiniteError(f"{what} at step {step} and train.nonfinite=stop; {resume}")
        bad = nonfinite_buffers(module)
        if bad:
            raise NonFiniteError(f"{what} at step {step} left non-finite buffers {bad[:3]}, which skipping the "
                                 f"update cannot undo; {resume}")
        if self.consecutive > self.max_consecutive:
            raise NonFiniteError(f"{what} at step {step}: {self.consecutive} steps in a row skipped (> "
                                 f"train.max_nonfinite_skips={self.max_consecutive}): the run diverged; {resume}")


class DeviceSkip:
    """The non-finite skip without a host sync per step. ``record`` takes the step's all-reduced "bad" flag,
    hands it to the fused optimizer as ``found_inf`` and keeps, on the device: the skips since the last read,
    the current run of consecutive skips, the step at which that run first exceeded the limit and the last bad
    step. ``settle`` reads them in one transfer and applies :class:`NonFiniteGuard`'s rules, so a skip is
    counted, logged and limited as on the host path, only noticed at the next step where the host acts."""

    def __init__(self, guard: NonFiniteGuard, device: torch.device):
        self.guard = guard
        zero = torch.zeros((), dtype=torch.long, device=device)
        self.new, self.consecutive, self.applied = zero.clone(), zero.clone(), zero + 1
        self.exceeded_at, self.last_bad = zero - 1, zero - 1

    def record(self, bad: torch.Tensor, step: int, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        """``bad`` > 0 skips this step. Returns ``applied`` (1 or 0, a device tensor) for the meter and method."""
        b = (bad.reshape(()) > 0).long()
        self.new += b
        self.consecutive = (self.consecutive + 1) * b
        over = (self.consecutive > self.guard.max_consecutive) & (self.exceeded_at < 0)
        self.exceeded_at = torch.where(over, step, self.exceeded_at)
        self.last_bad = torch.where(b.bool(), step, self.last_bad)
        self.applied = 1 - b
        optimizer.found_inf = b.float()  # fused AdamW (0-d, as its step counts): no update (and no step count) when set
        return self.applied

    def settle(self, module: nn.Module, last_checkpoint: Callable[[], Path | None]) -> tuple[bool, int]:
        """Account the skips since the last call (raising :class:`NonFiniteError` where the host path would
        have). Returns (whether the latest step updated the weights, the number of new skips)."""
        new, consecutive, exceeded_at, last_bad, applied = torch.stack(
            [self.new, self.consecutive, self.exceeded_at, self.last_bad, self.applied]).tolist()
        self.new.zero_()
        self.exceeded_at.fill_(-1)
        guard = self.guard
        guard.total += new
        guard.consecutive = guard.max_consecutive + 1 if exceeded_at >= 0 else consecutive
        if new:
            guard.check(exceeded_at if exceeded_at >= 0 else last_bad,
                        f"non-finite loss or gradient ({new} step(s) skipped since the last check, the latest at "
                        f"step {last_bad})", module, last_checkpoint())
        return bool(applied), new
