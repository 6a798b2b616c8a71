"""Checkpoints that survive crashes: written to a temporary file, fsynced, then renamed into place.

A checkpoint holds everything a run needs to continue exactly: the method's state (towers, heads, DeCLIP's
queue), optimizer, gradient scaler, step, data position, every rank's RNG states and the resolved config.
Loading uses ``torch.load(weights_only=True)``: tensors and plain containers only, no arbitrary pickle.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import torch

CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")


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
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


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


def save_checkpoint(directory: Path, step: int, payload: dict, keep_last: int) -> Path:
    assert_finite(payload["model"])
    path = checkpoint_path(directory, step)
    atomic_torch_save(payload, path)
    for _, old in list_checkpoints(directory)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def resolve_resume(spec: str, directory: Path) -> Path | None:
    """``latest`` -> newest checkpoint in the run directory (None if there is none); otherwise a path."""
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
