"""What ``declip data check`` and ``declip data shard`` share: an ordered parallel map over a manifest's lines,
the ``file:line`` prefix of a reported problem, and the problem tally each check prints. Its own module so that
the caption checks (tools.py) and the labelled checks (labelled.py) both use it without importing each other."""
from __future__ import annotations

import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TextIO


# How a check's bounded reads word their timeout and a hung mount: the flag that set the limit, and what to do
# once the mount is fixed (data check is run again; "--resume latest" is a run's way back, not a check's).
CHECK_WORDING = {"knob": "--timeout", "then": "run the check again"}


def ordered(fn: Callable, n: int, threads: int, progress: bool, desc: str) -> Iterator:
    """``fn(i)`` for i in range(n), in order, on ``threads`` threads, with at most a few chunks in flight."""
    from tqdm import tqdm

    chunk = max(64, 64 * threads)
    bar = tqdm(total=n, desc=desc, disable=not (progress and sys.stderr.isatty()), dynamic_ncols=True,
               mininterval=1, file=sys.stderr, leave=False)  # cleared on close: the report below is what stays
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for lo in range(0, n, chunk):
            for r in pool.map(fn, range(lo, min(n, lo + chunk))):
                yield r
                bar.update(1)
    bar.close()


def at_line(src, index: int, detail: str) -> str:
    """``detail`` prefixed with ``file:line`` of ``src``'s line ``index`` (once: a detail may carry it already)."""
    prefix = f"{src.path}:{index + 1}"
    return detail if detail.startswith(prefix) else f"{prefix}: {detail}"


class Problems:
    """Problems by reason, with the first ``max_examples`` of each (``file:line: detail``) kept to show."""

    def __init__(self, max_examples: int) -> None:
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = {}
        self.max_examples = max_examples

    def note(self, reason: str, text: str) -> None:
        self.counts[reason] += 1
        if len(self.examples.setdefault(reason, [])) < self.max_examples:
            self.examples[reason].append(text)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def print(self, reasons: Iterable[str], out: TextIO, header: str) -> None:
        """``header``, then each reason's count and examples, in the order of ``reasons``."""
        print(header, file=out)
        for reason in reasons:
            if self.counts[reason]:
                print(f"  {reason}: {self.counts[reason]}", file=out)
                for e in self.examples[reason]:
                    print(f"    {e}", file=out)
