"""What every data source is (a :class:`Source`), and the one way a source survives being sent to a worker.

Sources are map-style so that per-rank sharding and exact resume are one mechanism: the sampler hands out
indices, and the stream position is the number of samples consumed.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from PIL import Image


@runtime_checkable
class Source(Protocol):
    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[Image.Image, str]:
        """An RGB image and its caption, or :class:`~declip.data.errors.BadSample` naming why not."""
        ...

    def key(self, index: int) -> str:
        """Where sample ``index`` comes from (FILE:LINE, shard:key, ...), for skip reports."""
        ...


class FetchThenDecode:
    """A file-backed source in two steps: ``fetch(i)`` does all of sample ``i``'s I/O (its record, its image
    bytes) and ``decode(i, fetched)`` the CPU work. The loader's readahead (``data.readahead``) runs the fetches
    of the next samples on threads while this one decodes: what hides an object store's latency. ``remote``
    says whether the data is behind a URL (readahead is used there only)."""

    remote = False

    def fetch(self, index: int):
        raise NotImplementedError

    def decode(self, index: int, fetched) -> tuple[Image.Image, str]:
        raise NotImplementedError

    def load(self, index: int) -> tuple[Image.Image, str]:
        return self.decode(index, self.fetch(index))


class ReopenAfterPickle:
    """Sources hold memory-mapped indexes and open file handles. Sent to a spawned loader worker, they must not
    carry a copy of a 15M-entry index or a handle of another process: the attributes named in ``_transient``
    are dropped from the pickle and rebuilt by ``_open()`` (which re-maps the cached index) on arrival."""

    _transient: tuple[str, ...] = ()

    def _open(self) -> None:
        raise NotImplementedError

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self._transient}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()
