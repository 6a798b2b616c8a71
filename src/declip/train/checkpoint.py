"""Checkpoints that survive crashes: written to a temporary file, fsynced, then renamed into place.

A checkpoint holds everything a run needs to continue exactly: the method's state (towers, heads, DeCLIP's
queue and step counter, BatchNorm statistics: all registered buffers), optimizer, gradient scaler, step, data
position (samples consumed per rank: the sampler and the per-sample seeds rebuild the stream from it), every
rank's RNG states and the resolved config. There is no scheduler state to save: the learning rate is a pure
function of the step (``optim.lr_at``), so restoring the step restores the schedule.

Files in a run directory: ``ckpt_<step>.pt`` (the newest ``train.keep_last`` are kept; ``--resume latest``
picks the newest) and ``best.pt`` (the payload at the eval with the best zero-shot top-1 so far; never
pruned, never picked by ``latest``; when the eval that sets it falls on a checkpoint step, it is a hard link
to that checkpoint, not a second copy of the payload). Hidden ``.*.tmp.*`` files are writes in progress, or
writes a crash cut short: nothing ever loads them, and the next save removes them.

Loading uses ``torch.load(weights_only=True)``: tensors and plain containers only, no arbitrary pickle, so
everything in a payload must be a tensor, a number, a string, None or a list/tuple/dict of those (Python's
``random.getstate()`` is such a tuple).
"""
from __future__ import annotations

import os
import random
import re
import shutil
import zlib
from pathlib import Path

import torch

from ..errors import CheckpointError, NonFiniteError

CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
TMP_RE = re.compile(r"^\..+\.pt\.tmp\.(\d+)$")
BEST_NAME = "best.pt"


def _tmp_path(path: Path) -> Path:
    """Where a write of ``path`` goes before its rename (the name ``TMP_RE`` and ``remove_stale_tmp`` know)."""
    return path.with_name(f".{path.name}.tmp.{os.getpid()}")


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_torch_save(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:  # a full disk surfaces as torch's "enforce fail" RuntimeError
            free = shutil.disk_usage(path.parent).free / 2**20
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:120]
            raise CheckpointError(f"cannot write {path} ({why}; {free:.0f} MiB free on that disk): free some "
                                  "space or lower train.keep_last, then resume with --resume latest") from e
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`. The generator states must be CPU byte tensors, whatever map_location
    the checkpoint was loaded with (a GPU run loads its payload onto the GPU)."""
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CKPT_RE.match(p.name))]
    return sorted(found)


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"ckpt_{step:08d}.pt"


def assert_finite(state_dict: dict, doing: str = "write a checkpoint") -> None:
    bad = [k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteError(f"refusing to {doing}: non-finite weights in {bad[:5]}")


def _tensors(tree, out: list) -> list:
    if torch.is_tensor(tree):
        out.append(tree)
    elif isinstance(tree, dict):
        for k in sorted(tree, key=str):
            _tensors(tree[k], out)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            _tensors(v, out)
    return out


def checksum(tree) -> int:
    """CRC-32 of every tensor's bytes in a fixed order: torch.load does not verify a file's contents, so a
    flipped bit in a weight would otherwise load without complaint."""
    crc = 0
    for t in _tensors(tree, []):
        crc = zlib.crc32(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy(), crc)
    return crc


def remove_stale_tmp(directory: Path) -> None:
    """Delete temporary files left by a writer that was killed mid-write (SIGKILL skips the cleanup)."""
    for p in Path(directory).glob(".*.pt.tmp.*"):
        if (m := TMP_RE.match(p.name)) and int(m.group(1)) != os.getpid():
            p.unlink(missing_ok=True)


def payload_checksum(payload: dict) -> int:
    return checksum([payload.get("model", {}), payload.get("optimizer", {})])


def save_checkpoint(directory: Path, step: int, payload: dict, keep_last: int) -> Path:
    assert_finite(payload["model"])
    payload = {**payload, "checksum": payload_checksum(payload)}
    remove_stale_tmp(directory)
    path = checkpoint_path(directory, step)
    atomic_torch_save(payload, path)
    for _, old in list_checkpoints(directory)[:-keep_last]:
        if old != path:  # a run restarted from an older checkpoint: never prune what was just written
            old.unlink(missing_ok=True)
    return path


def save_best(directory: Path, payload: dict) -> Path:
    """``best.pt``: a full payload (it resumes like any checkpoint), replaced atomically on each improvement."""
    assert_finite(payload["model"])
    payload = {**payload, "checksum": payload_checksum(payload)}
    path = Path(directory) / BEST_NAME
    atomic_torch_save(payload, path)
    return path


def link_best(directory: Path, checkpoint: Path) -> Path:
    """``best.pt`` as a second name of ``checkpoint``, written at the step whose eval set the best: a hard link
    costs no disk (a ViT-B/32 payload with its AdamW moments is ~1.8 GB), and pruning the checkpoint later
    leaves best.pt whole. A filesystem without hard links gets a copy. Replaced atomically, like any save."""
    path = Path(directory) / BEST_NAME
    tmp = _tmp_path(path)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(checkpoint, tmp)
        except OSError:
            shutil.copyfile(checkpoint, tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def resolve_resume(spec: str, directory: Path) -> Path | None:
    """``latest`` -> newest ``ckpt_*.pt`` in the run directory (None if there is none); ``best`` -> its
    ``best.pt``; otherwise a path."""
    if spec == "latest":
        found = list_checkpoints(directory)
        return found[-1][1] if found else None
    path = Path(directory) / BEST_NAME if spec == "best" else Path(spec)
    if not path.is_file():
        raise CheckpointError(f"--resume {spec}: checkpoint not found: {path}")
    return path


def load_checkpoint(path: Path, map_location="cpu", require: tuple[str, ...] = ("model", "config")) -> dict:
    """A verified payload, or :class:`CheckpointError` naming the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated / foreign files: say which file
        raise CheckpointError(f"cannot load checkpoint {path}: truncated or not a torch file "
                              f"({str(e).splitlines()[0][:100]})") from e
    missing = [k for k in require if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a declip checkpoint (no {', '.join(map(repr, missing))})")
    if isinstance(state, dict) and "checksum" in state and payload_checksum(state) != state["checksum"]:
        raise CheckpointError(f"{path} is corrupt: its tensors do not match the checksum written with them")
    return state
