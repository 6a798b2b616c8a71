"""What every evaluation task shares: reading a JSON-lines manifest without dying on a bad line, decoding images
exactly as training does, and turning images / texts into L2-normalised features with the towers in eval mode.

Why one reader and one decoder: a number is only comparable across runs and tasks if the same file gives the
same pixels everywhere. Images go through :func:`declip.data.decode.load_image` (transparency over white,
16-bit scaled, CMYK converted, missing/corrupt files raised as :class:`BadSample`) and then the eval
transform (resize + centre crop); an unusable image is counted under its skip reason, never fatal.
Manifests and image roots may be URLs (``s3://``, ``gs://``, ``http(s)://``), read through :mod:`declip.storage`.
"""
from __future__ import annotations

import contextlib
import contextvars
import io
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .. import storage
from ..data.bounded import call_bounded, contained, filename_problem
from ..data.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, load_image
from ..data.device_augment import normalize_on_device
from ..data.errors import BadSample
from ..data.fetch import BoundedFetch
from ..data.loader import worker_timeout_s
from ..data.tokenizer import tokenize
from ..errors import DataError

log = logging.getLogger(__name__)


# Whether evaluation draws progress bars: on for ``declip eval`` on a terminal (:func:`show_progress`), off during
# training (the run's own bar and log lines are what a person watches) and into a pipe or a log file.
_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("declip_eval_progress", default=False)


@contextlib.contextmanager
def show_progress(wanted: bool):
    """Progress bars (tqdm, on stderr) for the evaluation passes run inside, when ``wanted`` and stderr is a
    terminal, as training draws its own."""
    token = _PROGRESS.set(bool(wanted) and sys.stderr.isatty())
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def progress(iterable=None, total: int | None = None, desc: str = ""):
    """A tqdm bar over ``iterable`` that draws only inside :func:`show_progress` on a terminal; cleared when
    done (the metrics are what stays)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not _PROGRESS.get(), dynamic_ncols=True,
                mininterval=1, file=sys.stderr, leave=False)


class EvalDataError(DataError, ValueError):
    """The evaluation inputs cannot give a meaningful number (a missing manifest, class names that do not
    match the labels, no readable image at all). The message says which file and why."""


@dataclass
class Manifest:
    """Parsed lines of a JSON-lines manifest: ``records`` (dicts, each with its ``_line`` number) and
    ``bad`` (one "FILE:LINE: why" per unusable line)."""

    path: Path
    records: list[dict] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)


def read_manifest(path: str | Path, check: Callable[[dict], None]) -> Manifest:
    """Every line parsed; ``check(record)`` raises ValueError/KeyError/TypeError for a line to count as bad.
    Blank lines are skipped silently (a trailing newline is not an error)."""
    path = storage.location(path)
    if storage.is_remote(path):
        try:
            storage.require_object(path, "manifest")
        except DataError as e:
            raise EvalDataError(str(e)) from None
    elif not path.is_file():
        raise EvalDataError(f"manifest not found: {path}")
    out = Manifest(path)
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise TypeError(f"expected a JSON object, got {type(rec).__name__}")
                why = filename_problem(rec.get("filename"))
                if why:
                    raise ValueError(f"'filename' {why}")
                check(rec)
            except (ValueError, KeyError, TypeError) as e:
                out.bad.append(f"{path}:{lineno}: {e}")
                continue
            rec["_line"] = lineno
            out.records.append(rec)
    if out.bad:
        log.warning("%s: %d unusable line(s), e.g. %s", path, len(out.bad), out.bad[0])
    return out


def _open_text(path):
    """A manifest as text lines (bad UTF-8 replaced, so a broken line is reported, not fatal)."""
    if storage.is_remote(path):
        return io.TextIOWrapper(storage.open_file(path), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def check_root(root: str | Path, what: str) -> Path | str:
    """The image folder (a URL root stays a string: its bucket must exist), or one :class:`EvalDataError` line."""
    if storage.is_remote(root):
        try:
            storage.require_bucket(str(root), what)
        except DataError as e:
            raise EvalDataError(str(e)) from None
        return str(root)
    root = Path(root)
    if not root.is_dir():
        raise EvalDataError(f"{what}: image folder not found: {root}")
    return root


class FileImages:
    """Picklable ``load(i)`` over image files (DataLoader workers get a copy): the training decoder, JPEGs
    decoded at reduced scale when more than twice the model input (the centre crop still has full detail).

    ``data`` (the run's ``DataConfig``) applies training's limits to evaluation images too: names stay inside
    the root (``outside_root``), huge images are refused from their header (``too_large``) and a read that
    hangs is given up after ``data.sample_timeout_s`` (``timeout``). ``where`` names the manifest in skips.
    ``draft=False`` decodes every JPEG at full size, as CLIP_benchmark and open_clip do: the same file then
    gives the same pixels there and here (``eval.jpeg_draft=false``)."""

    def __init__(self, root: str | Path, names: list[str], image_size: int, data=None, where: str = "",
                 draft: bool = True):
        self.root, self.names, self.image_size, self.draft = storage.location(root), list(names), image_size, draft
        self.where = where or str(root)
        self.max_pixels = data.max_image_pixels if data is not None else DEFAULT_MAX_PIXELS
        self.max_bytes = data.max_image_bytes if data is not None else DEFAULT_MAX_BYTES
        self.allow_outside = data.allow_outside_root if data is not None else False
        self.timeout_s = data.sample_timeout_s if data is not None else 60.0
        self.worker_timeout_s = worker_timeout_s(self.timeout_s, data.worker_timeout_s if data is not None else 0)

    def __len__(self) -> int:
        return len(self.names)

    def __call__(self, i: int):
        path = contained(self.root, self.names[i], self.allow_outside, self.where)
        target = self.image_size if self.draft else None
        return call_bounded(lambda: load_image(path, target, self.max_pixels, self.max_bytes), self.timeout_s,
                            str(path))


def file_images(root: str | Path, names: list[str], cfg, where: str = "") -> EvalImages:
    """The eval dataset over image files as ``cfg`` says: model input side, training's data limits,
    ``eval.jpeg_draft``, the eval transform. One place for the three file-based tasks, so they decode alike."""
    from ..data.views import eval_transform_uint8

    size = cfg.model.vision.image_size
    return EvalImages(FileImages(root, names, size, cfg.data, where, cfg.eval.jpeg_draft), len(names),
                      eval_transform_uint8(size))


class EvalImages(Dataset):
    """``load(i) -> PIL image`` + the eval transform. Item: (tensor, i) or (None, i, reason, detail)."""

    def __init__(self, load: Callable[[int], object], n: int, transform):
        self.load, self.n, self.transform = load, n, transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        try:
            return self.transform(self.load(i)), i
        except BadSample as e:
            return None, i, e.reason, e.detail


def _collate(items):
    ok = [it for it in items if it[0] is not None]
    bad = [it[1:] for it in items if it[0] is None]
    images = torch.stack([it[0] for it in ok]) if ok else None
    return images, torch.tensor([it[1] for it in ok], dtype=torch.long), bad


@dataclass
class Features:
    """Normalised features (or token-wise score rows) of the readable items: ``feats[j]`` belongs to item
    ``index[j]``."""

    feats: torch.Tensor
    index: torch.Tensor
    skips: Counter
    examples: list[str]

    @property
    def unreadable(self) -> int:
        return sum(self.skips.values())


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Eval mode (BatchNorm running stats, no dropout) and no autograd, restoring the caller's mode after:
    the trainer evaluates mid-run and must get its training-mode model back."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def image_features(clip, images: EvalImages, device, batch_size: int = 128, num_workers: int = 0,
                   what: str = "images", encode: Callable | None = None) -> Features:
    """Encode every readable image; unreadable ones are counted by skip reason (first examples logged).
    ``encode(pixels) -> [B, ...]`` replaces the normalised global feature: token-wise scoring keeps only each
    batch's score rows (eval/tokenwise.py) instead of every image's tokens."""
    if encode is None:
        def encode(pixels):
            return F.normalize(clip.encode_image(pixels).float(), dim=-1)
    loader = DataLoader(images, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    sample_s = getattr(images.load, "timeout_s", 60.0)  # a stopped worker ends the run at the watchdog, not never
    fetch = BoundedFetch(iter(loader), getattr(images.load, "worker_timeout_s", worker_timeout_s(sample_s)),
                         sample_s, 1, lambda: False, threaded=num_workers > 0)  # (declip.data.fetch)
    feats, index, skips, examples = [], [], Counter(), []
    with eval_mode(clip), contextlib.closing(fetch):
        for batch, idx, bad in progress(fetch, total=len(loader), desc=what):
            for _, reason, detail in bad:
                skips[reason] += 1
                if len(examples) < 3:
                    examples.append(f"{reason}: {detail}")
            if batch is not None:
                # uint8 crops from the CPU are normalised where they run; a finished float batch passes as it is
                pixels = normalize_on_device(batch, device) if batch.dtype == torch.uint8 else batch.to(device)
                feats.append(encode(pixels).float().cpu())
                index.append(idx)
    if skips:
        log.warning("%s: %d unreadable image(s) %s, e.g. %s", what, sum(skips.values()), dict(skips), examples[0])
    if not feats:
        raise EvalDataError(f"{what}: no readable image ({dict(skips)}; e.g. {examples[:1]})")
    return Features(torch.cat(feats), torch.cat(index), skips, examples)


def text_features(clip, texts: list[str], device, batch_size: int = 256, context_length: int = 77) -> torch.Tensor:
    """[len(texts), D] L2-normalised text features (CPU, float32)."""
    out = []
    with eval_mode(clip):
        for s in range(0, len(texts), batch_size):
            ids = tokenize(texts[s:s + batch_size], context_length).to(device)
            out.append(F.normalize(clip.encode_text(ids).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def counts(feats: Features, bad_lines: int) -> dict[str, float]:
    """The bookkeeping every task reports: readable images, unreadable ones (total and by skip reason) and
    unusable manifest lines."""
    out = {"images": int(feats.index.numel()), "unreadable": feats.unreadable, "bad_lines": bad_lines}
    out.update({f"skip_{reason}": n for reason, n in sorted(feats.skips.items())})
    return out
