"""Checkpoints that survive crashes: written to a temporary file, fsynced, then renamed into place.

A checkpoint holds everything a run needs to continue exactly: the method's state (towers, heads, DeCLIP's
queue and step counter, BatchNorm statistics: all registered buffers), optimizer, gradient scaler, step, data
position (samples consumed per rank: the sampler and the per-sample seeds rebuild the stream from it), every
rank's RNG states and the resolved config. There is no scheduler state to save: the learning rate is a pure
function of the step (``optim.lr_at``), so restoring the step restores the schedule.

Files in a run directory: ``ckpt_<step>.pt`` (the newest ``train.keep_last`` are kept; ``--resume latest``
picks the newest) and ``best.pt`` (the payload at the eval with the best zero-shot top-1 so far; never
pruned, never picked by ``latest``). Hidden ``.*.tmp.*`` files are writes in progress, or writes a crash cut
short: nothing ever loads them, and the next save removes them.

Loading uses ``torch.load(weights_only=True)``: tensors and plain containers only, no arbitrary pickle, so
everything in a payload must be a tensor, a number, a string, None or a list/tuple/dict of those (Python's
``random.getstate()`` is such a tuple).
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import torch

CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
TMP_RE = re.compile(r"^\..+\.pt\.tmp\.(\d+)$")
BEST_NAME = "best.pt"


def atomic_torch_save(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
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


def assert_finite(state_dict: dict) -> None:
    bad = [k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise RuntimeError(f"refusing to write a checkpoint with non-finite weights: {bad[:5]}")


def remove_stale_tmp(directory: Path) -> None:
    """Delete temporary files left by a writer that was killed mid-write (SIGKILL skips the cleanup)."""
    for p in Path(directory).glob(".*.pt.tmp.*"):
        if (m := TMP_RE.match(p.name)) and int(m.group(1)) != os.getpid():
            p.unlink(missing_ok=True)


def save_checkpoint(directory: Path, step: int, payload: dict, keep_last: int) -> Path:
    assert_finite(payload["model"])
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
    path = Path(directory) / BEST_NAME
    atomic_torch_save(payload, path)
    return path


def resolve_resume(spec: str, directory: Path) -> Path | None:
    """``latest`` -> newest ``ckpt_*.pt`` in the run directory (None if there is none); ``best`` -> its
    ``best.pt``; otherwise a path."""
    if spec == "best":
        spec = str(Path(directory) / BEST_NAME)
    if spec == "latest":
        found = list_checkpoints(directory)
        return found[-1][1] if found else None
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {spec}")
    return path


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated / foreign files: say which file
        raise RuntimeError(f"cannot load checkpoint {path}: {e}") from e
