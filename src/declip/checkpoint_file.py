"""Reading a declip checkpoint file safely: the weights-only load and the checksums written with it.

A leaf (it imports only :mod:`declip.errors`) because every reader of a declip checkpoint needs the same checks:
resume and ``declip eval`` (:mod:`declip.train.checkpoint`), ``model.init_from`` (:mod:`declip.models.pretrained`)
and :func:`declip.load`. A damaged file then fails the same way everywhere, in one line naming the part that
changed, and a file holding Python objects is refused in declip's words (torch's own message suggests
re-running with ``weights_only=False``, which would run the file's code).
"""
from __future__ import annotations

import pickle
import warnings
import zlib
from pathlib import Path

import torch

from .errors import CheckpointError

CHECKSUM_KEYS = ("checksum", "checksums")


def _crc(tree, crc: int, values: bool) -> int:
    """CRC-32 of a payload tree in a fixed order (dict keys sorted). ``values=False``: tensor bytes only (the
    checksum of older declip checkpoints); True: keys, numbers, strings, lengths, dtypes and shapes as well."""
    if torch.is_tensor(tree):
        if values:
            crc = zlib.crc32(f"T{tree.dtype}{tuple(tree.shape)}".encode(), crc)
        return zlib.crc32(tree.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy(), crc)
    if isinstance(tree, dict):
        for k in sorted(tree, key=str):
            crc = zlib.crc32(f"K{k!r}".encode(), crc) if values else crc
            crc = _crc(tree[k], crc, values)
        return crc
    if isinstance(tree, (list, tuple)):  # one tag for both: a tuple may load back as either
        crc = zlib.crc32(f"L{len(tree)}".encode(), crc) if values else crc
        for v in tree:
            crc = _crc(v, crc, values)
        return crc
    return zlib.crc32(f"V{tree!r}".encode(), crc) if values else crc


def checksum(tree) -> int:
    """CRC-32 of every tensor's bytes in a fixed order: torch.load does not verify a file's contents, so a
    flipped bit in a weight would otherwise load without complaint."""
    return _crc(tree, 0, values=False)


def part_checksums(payload: dict) -> dict[str, int]:
    """One CRC-32 per part of a payload (model, optimizer, step, rng, data, config, ...): a resume depends on
    every part, not only the weights, and a mismatch then names the part that changed."""
    return {k: _crc(v, 0, values=True) for k, v in payload.items() if k not in CHECKSUM_KEYS}


def payload_checksum(payload: dict) -> int:
    """The single checksum of older declip checkpoints (model and optimizer tensors), still verified on load."""
    return checksum([payload.get("model", {}), payload.get("optimizer", {})])


def read_checkpoint(path: Path, map_location="cpu", require: tuple[str, ...] = ("model", "config")) -> dict:
    """A verified payload, or :class:`CheckpointError` naming the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch's note on an old pickle protocol: the error below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickle, zip and torch each raise their own)
        raise CheckpointError(torch_load_failure(path, e)) from e
    missing = [k for k in require if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a declip checkpoint (no {', '.join(map(repr, missing))})")
    if isinstance(state, dict):
        verify_checksums(path, state)
    return state


RESUME_REMEDY = "resume from an earlier checkpoint (--resume PATH) or start afresh"


def verify_checksums(path: Path, state: dict, remedy: str = RESUME_REMEDY) -> None:
    """Refuse a payload whose parts differ from the checksums written with them (older files: the one checksum
    of their model and optimizer tensors); ``remedy`` is the next step the message offers."""
    if isinstance(state.get("checksums"), dict):
        written, found = state["checksums"], part_checksums(state)
        bad = [k for k in sorted(set(written) | set(found)) if written.get(k) != found.get(k)]
        if bad:
            raise CheckpointError(f"{path} is corrupt: its {', '.join(bad)} {'does' if len(bad) == 1 else 'do'} not "
                                  f"match the checksum written with it; {remedy}")
    elif "checksum" in state and payload_checksum(state) != state["checksum"]:
        raise CheckpointError(f"{path} is corrupt: its tensors do not match the checksum written with them; {remedy}")


def torch_load_failure(path: Path, error: Exception) -> str:
    """One line for a ``torch.load(weights_only=True)`` that failed: a pickle that would import and call code is
    refused in declip's words (torch's own message advises ``weights_only=False``, which would run it); anything
    else is a truncated or foreign file."""
    if isinstance(error, pickle.UnpicklingError) and _calls_code(Path(path)):
        return (f"{path} holds Python objects that a safe load (weights_only) refuses: it is not a declip "
                "checkpoint, or not from a source to trust; not loaded (save a plain state dict or safetensors "
                "where it was made)")
    first = str(error).strip().splitlines()[0][:100] if str(error).strip() else type(error).__name__
    if "Weights only load failed" in first:  # torch's preamble, and its advice to load unsafely: not ours to give
        first = "not a pickle of tensors"
    return f"cannot load checkpoint {path}: truncated or not a torch file ({first})"


def _calls_code(path: Path, limit: int = 1 << 20) -> bool:
    """Whether the file's pickle (a torch zip's data.pkl, or the file itself) imports or calls anything, read
    with :mod:`pickletools` (which executes nothing). Garbage is not a pickle, so it calls nothing."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name)[:limit] if name else b""
        else:
            with open(path, "rb") as f:
                data = f.read(limit)
        for op, _, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"):
                return True
    except (OSError, ValueError, zipfile.BadZipFile):
        return False
    return False
