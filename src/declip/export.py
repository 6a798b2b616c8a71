"""``declip export CHECKPOINT OUT_DIR``: a trained checkpoint's towers as an open_clip ``local-dir:`` model.

Why this is a copy and not a conversion: the towers ARE an ``open_clip.model.CustomTextCLIP`` (see
models/towers.py), so the exported state dict is ``method.clip``'s own, open_clip key names unchanged, and the
config is the same ``open_clip_model_cfg`` dict our builder used. Training-only state (SimSiam/MLM heads,
the NN queue, optimizer) stays behind. The folder holds:

- ``open_clip_config.json``: {"model_cfg": ..., "preprocess_cfg": ...} as open_clip's factory reads it, plus
  a "declip" entry with the provenance (ignored by open_clip);
- ``open_clip_model.safetensors``: the tower weights (safetensors: no pickle, loads without trusting code);
- ``README.md``: provenance and the tokenizer note below.

Tokenizer: our vocabulary is open_clip's CLIP BPE (49408 ids, SOT 49406, EOT 49407) plus DeCLIP's mask token at
49408. open_clip's unchanged tokenizer never emits 49408, so its ids are ours; the embedding table just has one
row it never reads. Text features are pooled at the EOT id (``pool_type='eos'``, ``eos_id=49407``), which the
exported text_cfg carries, so open_clip pools where training did.

Use: ``open_clip.create_model_and_transforms('local-dir:OUT_DIR')`` and ``open_clip.get_tokenizer(
'local-dir:OUT_DIR')``; it works offline.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .config import config_from_dict
from .vocab import EOT_ID, MASK_ID
from .data.views import IMAGENET_MEAN, IMAGENET_STD
from .models.open_clip_files import CONFIG_NAME, WEIGHTS_NAME, tower_state_dict  # noqa: F401  (re-exported)
from .models.towers import build_clip, open_clip_model_cfg
from .errors import CheckpointError
from .train.checkpoint import assert_finite, load_checkpoint


def preprocess_cfg(image_size: int) -> dict:
    """open_clip's PreprocessCfg fields for our eval pipeline (views.eval_transform): ImageNet mean/std,
    bilinear resize of the shortest side, centre crop. open_clip has no crop ratio: it resizes to
    ``image_size`` itself where we resize to image_size * 256/224 first (a slightly tighter crop)."""
    return {"size": image_size, "mode": "RGB", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "interpolation": "bilinear", "resize_mode": "shortest"}


def load_towers(checkpoint: str | Path, device="cpu", doing: str = "evaluate"):
    """(open_clip towers with the checkpoint's weights in eval mode, the checkpoint's Config, the payload).

    Towers only: evaluation and export never need the SimSiam/MLM heads or a 65,536 x D NN queue. Refuses
    non-finite weights, and weights that do not fit the config (naming the keys) here rather than in a
    user's open_clip call."""
    state = load_checkpoint(checkpoint)
    towers = tower_state_dict(state["model"])
    assert_finite(towers, doing=f"{doing} {checkpoint}")
    cfg = config_from_dict(state["config"])
    clip = build_clip(cfg.model)
    missing, unexpected = clip.load_state_dict(towers, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{checkpoint}: tower weights do not match the model config "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return clip.to(torch.device(device)).eval(), cfg, state


def export_open_clip(checkpoint: str | Path, out_dir: str | Path, interpolate: float | None = None,
                     start: str = "") -> Path:
    """``interpolate=ALPHA, start=START``: the WiSE-FT mix ``(1 - ALPHA) * START + ALPHA * checkpoint``
    (models/wise_ft.py) instead of the checkpoint's towers as they are."""
    from safetensors.torch import save_file

    checkpoint, out = Path(checkpoint), Path(out_dir)
    clip, cfg, state = load_towers(checkpoint, doing="export")
    if interpolate is not None:
        from .models.wise_ft import Interpolation

        Interpolation(clip, start, str(checkpoint)).apply(interpolate)
    towers = clip.state_dict()

    out.mkdir(parents=True, exist_ok=True)
    step = int(state.get("step", -1))
    config = {
        "model_cfg": open_clip_model_cfg(cfg.model),
        "preprocess_cfg": preprocess_cfg(cfg.model.vision.image_size),
        "declip": {"checkpoint": str(checkpoint), "step": step, "method": cfg.method.name,
                   "preset": cfg.model.preset, "mask_token_id": MASK_ID, "eos_id": EOT_ID,
                   **({"wise_ft": {"from": start, "alpha": interpolate}} if interpolate is not None else {})},
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in towers.items()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt", "source": "declip", "step": str(step)})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out / WEIGHTS_NAME, 0o666 & ~umask)  # safetensors writes 0600: share it like any other output file
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_readme(checkpoint, step, cfg.method.name), encoding="utf-8")
    return out


def _readme(checkpoint: Path, step: int, method: str) -> str:
    return f"""# {method} towers exported by declip

Source: `{checkpoint}` (step {step}). Load with open_clip (offline):

```python
import open_clip
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:<this folder>")
tokenizer = open_clip.get_tokenizer("local-dir:<this folder>")
```

Tokenizer note: the text tower's vocabulary is open_clip's CLIP BPE (ids 0-49407, SOT 49406, EOT 49407)
plus DeCLIP's MLM mask token at id {MASK_ID} (vocab_size 49409). open_clip's tokenizer is used unchanged: it
never produces id {MASK_ID}. Text features are pooled at the EOT token (text_cfg pool_type "eos",
eos_id {EOT_ID}), as in training.

Preprocessing note: declip evaluates with Resize(size * 256/224) + CenterCrop(size); open_clip's "shortest"
mode resizes to `size` and crops (no margin), so zero-shot numbers through open_clip's transform can differ
slightly from `declip eval`.
"""
