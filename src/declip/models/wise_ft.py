"""WiSE-FT (Wortsman et al. 2022): the weight-space mix ``(1 - alpha) * start + alpha * fine_tuned`` of the towers.

Why: fine-tuning on a small set gains on that set and loses some of the start's zero-shot robustness; a mix of
the two weights (alpha between 0 and 1) keeps most of both, at no training cost. ``declip export --interpolate
ALPHA --from START`` writes one mix as an open_clip model, ``declip eval --interpolate A,B,... --from START``
scores several and prints the curve.

START is anything ``model.init_from`` accepts (models/pretrained.py reads it: a declip checkpoint, an export
folder or ``local-dir:``, an open_clip checkpoint file, ``openclip:MODEL/TAG``), in open_clip's names. Both must
be one architecture: every key and shape is checked first and the first mismatch is one line. Floating tensors
are mixed (the logit scale and BatchNorm statistics included); integer ones (BatchNorm's batch counter) are the
fine-tuned model's. A start with open_clip's 49,408-row token embedding mixes those rows and leaves the fine-tuned
model's MLM mask-token row as it is (the start has none; open_clip's tokenizer never reads it).
"""
from __future__ import annotations

import torch

from ..errors import CheckpointError
from .pretrained import TOKEN_EMBEDDING, read_weights, to_custom_text_names


def parse_alphas(text: str) -> list[float]:
    """``"0,0.25,0.5"`` -> [0.0, 0.25, 0.5]; each in [0, 1] (0 = the start, 1 = the fine-tuned model)."""
    try:
        alphas = [float(a) for a in str(text).split(",") if a.strip()]
    except ValueError:
        alphas = []
    if not alphas or not all(0.0 <= a <= 1.0 for a in alphas):
        raise CheckpointError(f"--interpolate {text}: give ALPHA (or comma-separated ALPHAs) in [0, 1]: 0 is the "
                              "--from model, 1 the fine-tuned one, e.g. --interpolate 0.5")
    return alphas


def start_state(start: str, fine_tuned: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """START's towers in the fine-tuned model's names, shapes checked against ``fine_tuned`` (named ``name``)."""
    state, source = read_weights(start)
    state, _ = to_custom_text_names(state)
    extra = [k for k in state if k not in fine_tuned]
    missing = [k for k in fine_tuned if k not in state]
    if extra or missing:
        which = f"has {extra[0]!r}, which {name} lacks" if extra else f"lacks {missing[0]!r}"
        raise CheckpointError(f"--from {start}: {source} {which}: WiSE-FT mixes two models of one architecture "
                              f"(the fine-tuned one and the model it started from)")
    out = {}
    for key, target in fine_tuned.items():
        value = state[key]
        if key == TOKEN_EMBEDDING and value.shape[0] == target.shape[0] - 1 and value.shape[1:] == target.shape[1:]:
            value = torch.cat([value.to(target.dtype), target[value.shape[0]:].cpu()])  # the mask row: fine-tuned's
        elif value.shape != target.shape:
            raise CheckpointError(f"--from {start}: {key} is {tuple(value.shape)} there but {tuple(target.shape)} in "
                                  f"{name}: WiSE-FT mixes two models of one architecture")
        out[key] = value
    return out


def mix(start: dict[str, torch.Tensor], fine_tuned: dict[str, torch.Tensor], alpha: float
        ) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * start + alpha * fine_tuned`` per floating tensor, in the fine-tuned tensor's dtype."""
    out = {}
    for key, ft in fine_tuned.items():
        if ft.is_floating_point():
            s = start[key].to(device=ft.device, dtype=ft.dtype)
            out[key] = (1.0 - alpha) * s + alpha * ft
        else:
            out[key] = ft.clone()
    return out


class Interpolation:
    """A fine-tuned open_clip model and its start; ``apply(alpha)`` loads the mix into the model in place."""

    def __init__(self, clip: torch.nn.Module, start: str, name: str):
        self.clip = clip
        self.fine_tuned = {k: v.detach().clone() for k, v in clip.state_dict().items()}
        self.start = start_state(start, self.fine_tuned, name)

    def apply(self, alpha: float) -> torch.nn.Module:
        self.clip.load_state_dict(mix(self.start, self.fine_tuned, alpha), strict=True)
        return self.clip
