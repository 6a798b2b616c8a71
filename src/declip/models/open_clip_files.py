"""The file layout of an open_clip ``local-dir:`` model, which ``declip export`` writes and ``model.init_from``
reads: one place for the names, so the writer and the reader cannot drift apart."""
from __future__ import annotations

import torch

from ..errors import CheckpointError

from ..model_ref import CONFIG_NAME, FOLDER_WEIGHTS, WEIGHTS_NAME  # noqa: F401  (re-exported)
TOWER_PREFIX = "clip."  # Method.clip: the open_clip model inside every method's state dict


def tower_state_dict(model_state: dict) -> dict[str, torch.Tensor]:
    """The towers' entries of a method state dict, with the ``clip.`` prefix removed (open_clip names)."""
    towers = {k[len(TOWER_PREFIX):]: v for k, v in model_state.items() if k.startswith(TOWER_PREFIX)}
    if not towers:
        raise CheckpointError(f"no '{TOWER_PREFIX}*' entries in the checkpoint's model state: not a declip "
                              "checkpoint?")
    return towers
