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
import socket
from pathlib import Path

import torch

from ..checkpoint_file import CHECKSUM_KEYS, checksum, part_checksums, payload_checksum  # noqa: F401
from ..checkpoint_file import read_checkpoint as load_checkpoint  # noqa: F401  (the name callers use)
from ..checkpoint_file import verify_checksums  # noqa: F401
from ..errors import CheckpointError, NonFiniteError

CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
TMP_RE = re.compile(r"^\..+\.pt\.tmp\.(?:(.+)\.)?(\d+)$")  # .<name>.tmp.<host>.<pid> (no host: older declip)
BEST_NAME = "best.pt"


def _tmp_path(path: Path) -> Path:
    """Where a write of ``path`` goes before its rename (the name ``TMP_RE`` and ``remove_stale_tmp`` know): the
    writer's host and pid, so that a cleanup can tell a dead writer's leftover from a live writer's file."""
    return path.with_name(f".{path.name}.tmp.{socket.gethostname()}.{os.getpid()}")


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
            why = (e.strerror or str(e)) if isinstance(e, OSError) else str(e).strip().splitlines()[0][:120]
            if "enforce fail" in why or "PytorchStreamWriter" in why:  # torch's C++ internals, no help to a user
                why = "the write failed"
            raise CheckpointError(write_failure(path, why, "free some space or lower train.keep_last")) from e
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_failure(path: Path, why: str, remedy: str = "free some space") -> str:
    """One line for a write into the run folder that failed (a full disk, typically): the file, the free space,
    and the way back, which depends on whether the run has a checkpoint to resume from yet."""
    free = shutil.disk_usage(path.parent).free / 2**20
    back = ("resume with --resume latest" if list_checkpoints(path.parent) else
            "start the run again with --overwrite (there is no checkpoint to resume yet)")
    return f"cannot write {path} ({why}; {free:.0f} MiB free on that disk): {remedy}, then {back}"


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


def _alive_here(host: str | None, pid: int) -> bool:
    """Whether a temp file's writer may still be running: another host's writer cannot be checked, so it is."""
    if host is not None and host != socket.gethostname():
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_tmp(directory: Path) -> None:
    """Delete temporary files left by a writer that was killed mid-write (SIGKILL skips the cleanup), and only
    those: a live writer's file (another run's save in progress) is never touched."""
    for p in Path(directory).glob(".*.pt.tmp.*"):
        if (m := TMP_RE.match(p.name)) and not _alive_here(m.group(1), int(m.group(2))):
            p.unlink(missing_ok=True)


def _with_checksums(payload: dict) -> dict:
    return {**{k: v for k, v in payload.items() if k not in CHECKSUM_KEYS}, "checksums": part_checksums(payload)}


def save_checkpoint(directory: Path, step: int, payload: dict, keep_last: int) -> Path:
    assert_finite(payload["model"])
    payload = _with_checksums(payload)
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
    payload = _with_checksums(payload)
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


def load_model_state(model: torch.nn.Module, state_dict: dict, path: Path) -> None:
    """``load_state_dict``, with a mismatch the config comparison could not see (e.g. a foreign file) as one line
    naming the file and the first offending key."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        raise CheckpointError(f"{path} does not fit this model: {lines[min(1, len(lines) - 1)].strip()}") from e
