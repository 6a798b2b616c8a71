"""Training batches: sampler -> per-sample views and text views -> collated dict of tensors -> the device.

Images leave the workers as uint8 crops (``images`` [B, V, 3, H, W]) plus the random parameters of the per-pixel
augmentations (``aug_params``, and the collate function's ``aug_index``/``aug_counts``); the training device
finishes them (:mod:`declip.data.device_augment`). :class:`DevicePrefetcher` copies the next batch from pinned
memory while the current step runs.

Reproducibility is per sample, not per worker: sample ``i`` of epoch ``e`` draws all its randomness
(crops, colour jitter parameters, EDA, masking) from a seed that depends only on (seed, e, i). A run therefore gives
the same batches whatever the worker count, and a resumed run continues with exactly the batches the
uninterrupted run would have seen; the stream position is just the number of samples consumed.
"""
from __future__ import annotations

import functools
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataQualityError
from ..vocab import masked_positions
from .bounded import call_bounded
from .device_augment import augment_plan
from .errors import SKIP_REASONS, BadSample, DataStallError
from .seeding import epoch_seed, item_seed
from .source_base import Source
from .text import TextPipeline, TextSpec
from .views import build_train_views

MAX_ATTEMPTS = 16
MAX_EXAMPLES = 5  # "FILE:LINE: reason: detail" strings a batch carries to the trainer's log and stop message


@dataclass(frozen=True)
class DataSpec:
    """What a method needs from the data pipeline (declared by the method, built by the loader)."""

    n_views: int = 1
    augment: str = "clip"  # clip | mocov2
    text: TextSpec = TextSpec()
    crop_scale: tuple[float, float] | None = None  # RandomResizedCrop area range; None = the augment's reference
    second_view_crop_scale: tuple[float, float] | None = None  # the second view's; None = as the first's
    crop_interpolation: str = "bilinear"  # the crops' resize: bilinear (the reference's) | bicubic

    def with_user_crops(self, data) -> DataSpec:
        """The spec with the user's crop ranges (``data.crop_scale`` / ``data.second_view_crop_scale``), where
        set, in place of the method's reference ones, and the user's ``data.crop_interpolation``."""
        first = tuple(data.crop_scale) if data.crop_scale else self.crop_scale
        second = tuple(data.second_view_crop_scale) if data.second_view_crop_scale else self.second_view_crop_scale
        return replace(self, crop_scale=first, second_view_crop_scale=second,
                       crop_interpolation=data.crop_interpolation)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (item_seed(seed, epoch) * 2_147_483_647 + index) % (2**63 - 1)


class ResumableSampler(Sampler):
    """Endless stream of (epoch, index): a fresh permutation per epoch, a disjoint equal share per rank.

    ``start`` is the number of samples this rank has already consumed; resuming passes it back.
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0):
        if size < world_size:
            raise ValueError(f"data set of {size} samples is smaller than the world size {world_size}")
        self.size, self.seed, self.rank, self.world = size, seed, rank, world_size
        self.per_rank = size // world_size
        self.start = start

    def __iter__(self):
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            perm = torch.randperm(self.size, generator=g)[: self.per_rank * self.world]
            mine = perm[self.rank :: self.world].tolist()
            for idx in mine[offset:]:
                yield epoch, idx
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # one epoch's share; the stream itself is endless
        return self.per_rank


class PairDataset(Dataset):
    """Sample ``(epoch, index)`` -> ``images`` (uint8 crops), ``aug_params`` (mocov2), text views, ``index``,
    ``skips``. ``views`` replaces the image stage: a callable PIL image -> dict of tensors, or -> a tensor of
    finished views (the reference CPU pipeline, :func:`declip.data.views.build_reference_views`).
    ``sample_timeout_s``: a sample not loaded (read + decoded) in this time is skipped as ``timeout``
    (:func:`declip.data.bounded.call_bounded`). ``readahead``: for a remote source (``source.remote``), how many
    samples of a batch each worker fetches ahead on threads (:meth:`__getitems__`) while it decodes."""

    def __init__(self, source: Source, spec: DataSpec, image_size: int, seed: int = 0, views=None,
                 sample_timeout_s: float = 60.0, readahead: int = 0):
        self.source, self.spec, self.seed = source, spec, seed
        self.sample_timeout_s = sample_timeout_s
        self.readahead = readahead if getattr(source, "remote", False) and hasattr(source, "fetch") else 0
        self._pool: tuple[int, ThreadPoolExecutor] | None = None
        self.views = views if views is not None else build_train_views(
            spec.augment, image_size, spec.n_views, spec.crop_scale, spec.second_view_crop_scale,
            spec.crop_interpolation)
        self.text = TextPipeline(spec.text)

    def __len__(self) -> int:
        return len(self.source)

    def __getstate__(self):
        return {**self.__dict__, "_pool": None}  # threads stay in the process that started them

    def _fetch(self, index: int):
        """``source.fetch(index)`` within the sample timeout, as ("ok", bytes...) or ("bad", BadSample)."""
        try:
            return "ok", call_bounded(functools.partial(self.source.fetch, index), self.sample_timeout_s,
                                      functools.partial(self._position, index))
        except BadSample as e:
            return "bad", e

    def __getitems__(self, items: list):
        """A batch's samples (torch's fetcher calls this in place of ``__getitem__`` per item). With readahead,
        the fetches of the next ``readahead`` samples run on this process's threads while each sample decodes,
        in order, on the calling thread: the same samples as one at a time (what is fetched depends only on
        the index), with the store's latency paid about once per ``readahead`` samples instead of per sample.
        Substitutes for unusable samples are fetched in place, as without readahead."""
        if not self.readahead:
            return [self[item] for item in items]
        if self._pool is None or self._pool[0] != os.getpid():  # a forked worker starts its own threads
            self._pool = (os.getpid(), ThreadPoolExecutor(self.readahead, thread_name_prefix="declip-readahead"))
        pool = self._pool[1]
        index = [item[1] if isinstance(item, tuple) else item for item in items]
        futures = [pool.submit(self._fetch, j) for j in index[: self.readahead]]
        out = []
        for k, item in enumerate(items):
            if k + self.readahead < len(items):
                futures.append(pool.submit(self._fetch, index[k + self.readahead]))
            out.append(self._sample(item, futures[k].result()))
            futures[k] = None
        return out

    def __getitem__(self, item):
        return self._sample(item)

    def _first(self, j: int, first):
        """Sample ``j``'s (image, caption): decoded from ``first`` (a readahead's fetch result) when given."""
        if first is None:
            return call_bounded(functools.partial(self.source.load, j), self.sample_timeout_s,
                                functools.partial(self._position, j))
        status, value = first
        if status == "bad":
            raise value
        return call_bounded(functools.partial(self.source.decode, j, value), self.sample_timeout_s,
                            functools.partial(self._position, j))

    def _sample(self, item, first=None):
        epoch, index = item if isinstance(item, tuple) else (0, item)
        seed = sample_seed(self.seed, epoch, index)
        skips = torch.zeros(len(SKIP_REASONS), dtype=torch.long)
        examples = []
        n = len(self.source)
        for attempt in range(MAX_ATTEMPTS):
            j = index if attempt == 0 else random.Random(seed + attempt).randrange(n)
            try:
                image, caption = self._first(j, first if attempt == 0 else None)
            except BadSample as e:
                skips[SKIP_REASONS.index(e.reason)] += 1
                if len(examples) < MAX_EXAMPLES:
                    name = self._position(j) if e.reason == "timeout" else self.source.key(j)
                    examples.append(f"{name}: {e}")
                continue
            rng = random.Random(seed + attempt)
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed would also (lazily) reseed CUDA, which fork_rng does not
                # restore, and costs ~1 ms per sample in a worker (it records a traceback for the lazy call)
                torch.default_generator.manual_seed(seed + attempt)
                views = self.views(image)  # crops and the device stage's parameters, all from this seed
            if torch.is_tensor(views):
                views = {"images": views}
            sample = {**views, **self.text(caption, rng), "index": torch.tensor(j), "skips": skips}
            sample["skip_examples"] = examples
            return sample
        raise DataQualityError(f"{MAX_ATTEMPTS} consecutive unusable samples around index {index}: {examples}; "
                               "check the data with `declip data check`")

    def _position(self, j: int) -> str:
        """A timed-out sample's name, from a source's I/O-free ``position`` where its ``key`` reads (shards)."""
        return getattr(self.source, "position", self.source.key)(j)


def collate(samples: list[dict]) -> dict:
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k not in ("skips", "skip_examples")}
    batch["skips"] = torch.stack([s["skips"] for s in samples]).sum(0)
    batch["skip_examples"] = [e for s in samples for e in s["skip_examples"]][:MAX_EXAMPLES]
    if "aug_params" in batch:  # which views the device stage's subset ops touch, known here on the CPU
        batch["aug_index"], batch["aug_counts"] = augment_plan(batch["aug_params"])
    if "mlm_labels" in batch:  # the masked positions, known here: the MLM loss gathers them without a sync
        batch["mlm_index"] = masked_positions(batch["mlm_labels"])
    return batch


def worker_timeout_s(sample_timeout_s: float, configured: float = 0.0) -> float:
    """How long the trainer waits for a worker's next batch before calling the worker stalled
    (``data.worker_timeout_s``; 0 = this default). Every read is bounded by ``sample_timeout_s`` (a hung one is
    abandoned, and a hung mount raises in the worker), so a worker silent this long is stuck outside the reads:
    deadlocked, stopped (SIGSTOP) or swapping to death. Generous, as a batch may legitimately hold a few
    timed-out samples."""
    return configured if configured > 0 else max(300.0, 10 * sample_timeout_s)


def stall_error(error: RuntimeError | None, timeout_s: float, sample_timeout_s: float) -> DataStallError | None:
    """The trainer's watchdog (``error`` None) or torch's ``DataLoader(timeout=...)`` error (no batch from the
    workers in time) as one line that says what to do; None for any other error."""
    if error is not None and "DataLoader timed out" not in str(error):
        return None
    return DataStallError(
        f"no batch from the data-loader workers in {timeout_s:g} s (data.worker_timeout_s; every read is bounded "
        f"by data.sample_timeout_s={sample_timeout_s:g}): a worker stopped making progress; check the data's "
        "file system and the workers (stopped, swapping), then --resume latest")


def build_train_loader(dataset: PairDataset, batch_size: int, num_workers: int, rank: int, world_size: int,
                       seed: int, start: int = 0, pin_memory: bool = False,
                       worker_timeout: float | None = None) -> DataLoader:
    """``worker_timeout``: seconds without a batch from the workers before the loader raises (default
    :func:`worker_timeout_s` of the dataset's sample timeout); the trainer turns that into one line."""
    sampler = ResumableSampler(len(dataset), seed, rank, world_size, start)
    if worker_timeout is None:
        worker_timeout = worker_timeout_s(getattr(dataset, "sample_timeout_s", 60.0))
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate,
        drop_last=True, pin_memory=pin_memory, persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None, timeout=worker_timeout if num_workers > 0 else 0,
    )


class DevicePrefetcher:
    """Iterate batches already on ``device``: while the caller works on batch i, batch i+1 is copied host ->
    device (non_blocking, from the loader's pinned memory) on a side CUDA stream. On other devices it just
    moves each batch when asked (nothing to overlap with on the CPU). Tensors named in ``host_keys`` stay on the
    host (bookkeeping the trainer reads there); non-tensors pass through. An error while fetching ahead (a data
    stall) is raised at the next call: the batch already copied is used first, so a step never stops halfway."""

    def __init__(self, iterable, device: torch.device | str, host_keys: tuple[str, ...] = ("skips",)):
        self.it, self.device, self.host_keys = iter(iterable), torch.device(device), host_keys
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.next_batch, self.host_batch = None, None
        self.done, self.error = False, None

    def _move(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) and k not in self.host_keys else v
                for k, v in batch.items()}

    def _preload(self) -> None:
        try:
            batch = next(self.it)
        except StopIteration:
            self.next_batch, self.done = None, True
            return
        except Exception as e:  # e.g. a data stall: raised at the next call, after the batch in hand is used
            self.next_batch, self.error = None, e
            return
        with torch.cuda.stream(self.stream):
            self.next_batch = self._move(batch)
        self.host_batch = batch  # pinned source of the copy in flight: kept alive until the next one starts

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.stream is None:  # CPU (or any non-CUDA device): plain, in order
            return self._move(next(self.it))
        if self.error is not None:
            raise self.error
        if self.next_batch is None and not self.done:
            self._preload()  # the first batch
            if self.error is not None:
                raise self.error
        if self.next_batch is None:
            raise StopIteration
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)  # the copy of this batch is complete before anything uses it
        batch = self.next_batch
        for v in batch.values():
            if torch.is_tensor(v) and v.device.type == "cuda":
                v.record_stream(current)  # allocated on the side stream, used on the current one
        self._preload()  # start copying the next batch now: it overlaps this step's compute
        return batch
