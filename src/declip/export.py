"""``declip export CHECKPOINT OUT_DIR``: a trained checkpoint's towers as an open_clip ``local-dir:`` model.

Why this is a copy and not a conversion: the towers ARE an ``open_clip.model.CustomTextCLIP`` (see
models/towers.py), so the exported state dict is ``method.clip``'s own, open_clip key names unchanged, and the
config is the same ``open_clip_model_cfg`` dict our builder used. Training-only state (SimSiam/MLM heads,
the NN queue, optimizer) stays behind. The folder holds:

- ``open_clip_config.json``: {"model_cfg": ..., "preprocess_cfg": ...} as open_clip's factory reads it, plus
  a "declip" entry with the provenance (ignored by open_clip);
- ``open_clip_model.safetensors``: the tower weights (safetensors: no pickle, loads without trusting code);
- ``README.md``: a model card (YAML front matter ``library_name: open_clip``, tags, license; the recipe, the
  data, the steps and the evaluation results the run logged), the tokenizer note below and how to load it.

The same folder is the Hugging Face Hub layout (``declip export CKPT --hf-hub DIR``): ``huggingface_hub.
upload_folder`` pushes it as is, and ``open_clip.create_model_and_transforms('hf-hub:ORG/NAME')`` reads it back
(open_clip looks for ``open_clip_model.safetensors`` and ``open_clip_config.json`` there too).

Tokenizer: our vocabulary is open_clip's CLIP BPE (49408 ids, SOT 49406, EOT 49407) plus DeCLIP's mask token at
49408. open_clip's unchanged tokenizer never emits 49408, so its ids are ours; the embedding table just has one
row it never reads. Text features are pooled at the EOT id (``pool_type='eos'``, ``eos_id=49407``), which the
exported text_cfg carries, so open_clip pools where training did.

Use: ``open_clip.create_model_and_transforms('local-dir:OUT_DIR')`` and ``open_clip.get_tokenizer(
'local-dir:OUT_DIR')``, or ``declip.load('local-dir:OUT_DIR')``; it works offline.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .config import config_from_dict
from .vocab import EOT_ID, MASK_ID
from .data.views import eval_preprocess_cfg
from .models.open_clip_files import CONFIG_NAME, WEIGHTS_NAME, tower_state_dict  # noqa: F401  (re-exported)
from .models.towers import build_clip, open_clip_model_cfg
from .errors import CheckpointError
from .train.checkpoint import assert_finite, load_checkpoint


def preprocess_cfg(image_size: int) -> dict:
    """open_clip's PreprocessCfg fields of ``declip eval``'s transform: the same dict evaluation builds its transform
    from (:func:`declip.data.views.eval_preprocess_cfg`), so open_clip and CLIP_benchmark see the same pixels."""
    return eval_preprocess_cfg(image_size)


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
                     start: str = "", repo_id: str = "", license: str = "other") -> Path:
    """Write the towers of ``checkpoint`` to ``out_dir`` (see the module docstring); ``repo_id`` (ORG/NAME) is
    the Hub repository the model card's usage names, ``license`` its front matter's licence.
    ``interpolate=ALPHA, start=START``: the WiSE-FT mix ``(1 - ALPHA) * START + ALPHA * checkpoint``
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
    # the run's logged evaluation describes the checkpoint, not a WiSE-FT mix of it: the card states none then
    results = run_results(checkpoint, step, cfg.train.output_dir) if interpolate is None else {}
    (out / "README.md").write_text(model_card(cfg, checkpoint, step, results, repo_id, license), encoding="utf-8")
    return out


def run_results(checkpoint: Path, step: int, output_dir: str = "") -> dict[str, float]:
    """The evaluation the run logged for this checkpoint's step (the metrics.jsonl beside the checkpoint, else in
    the run's train.output_dir: the closing evaluation for the last checkpoint, the best one for best.pt), else
    the latest before it; {} when the run left no metrics."""
    from .train.metrics import read_metrics

    candidates = [checkpoint.parent / "metrics.jsonl"] + ([Path(output_dir) / "metrics.jsonl"] if output_dir else [])
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return {}
    evals = [r for r in read_metrics(path) if r.get("kind") == "eval" and int(r["step"]) <= step]
    if not evals:
        return {}
    last = evals[-1]
    return {"step": int(last["step"]), **{k: v for k, v in last.items()
                                           if k not in ("kind", "step", "time") and isinstance(v, (int, float))}}


def model_card(cfg, checkpoint: Path, step: int, results: dict, repo_id: str = "", license: str = "other") -> str:
    """README.md for the Hub and for people: front matter open_clip's Hub integration reads, then what was
    trained on what, for how long, and what it scored."""
    m, tr, o, d = cfg.model, cfg.train, cfg.optim, cfg.data
    tags = ["clip", "open_clip", "declip", cfg.method.name, "zero-shot-image-classification"]
    front = "\n".join(["---", "library_name: open_clip", f"license: {license}", "tags:",
                       *[f"- {t}" for t in dict.fromkeys(tags)], "pipeline_tag: zero-shot-image-classification",
                       "---", ""])
    vision = (f"ViT, {m.vision.layers} layers, width {m.vision.width}, patch {m.vision.patch_size}"
              if m.vision.kind == "vit" else f"ModifiedResNet {list(m.vision.layers)}, width {m.vision.width}")
    data = {"builtin": f"declip's built-in generated shapes ({d.builtin_size} pairs)",
            "manifest": f"a JSON-lines manifest `{d.path}` (images under `{d.root}`)",
            "csv": f"a CSV/TSV file `{d.path}` (images under `{d.root}`)",
            "webdataset": f"WebDataset shards `{d.path}`"}[d.source]
    rows = "\n".join(f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |"
                      for k, v in results.items() if k != "step")
    evaluation = (f"Logged by the run at step {results['step']} (`declip eval` protocol, docs/evaluation.md):\n\n"
                  f"| metric | value |\n|---|---|\n{rows}\n" if results else
                  "The run logged no evaluation for this checkpoint; `declip eval --checkpoint CKPT` gives one.\n")
    name = repo_id or "ORG/NAME"
    return f"""{front}
# {cfg.method.name} image-text towers, trained with declip

## Recipe

- method: `{cfg.method.name}`; towers: {vision}, image size {m.vision.image_size}; text transformer {m.text.layers}
  layers, width {m.text.width}, context {m.text.context_length}; embedding {m.embed_dim}
- steps: {step} of {tr.steps}; batch {tr.batch_size} per device x {tr.grad_accum} accumulation step(s); peak lr
  {o.lr:g}, seed {tr.seed}, precision {tr.precision}
- started from: {f"`{m.init_from}`" if m.init_from else "scratch"}
- source checkpoint: `{checkpoint.name}` (step {step})

## Data

{data}.

## Evaluation

{evaluation}
## Use

```python
import open_clip
model, _, preprocess = open_clip.create_model_and_transforms("hf-hub:{name}")  # or "local-dir:<this folder>"
tokenizer = open_clip.get_tokenizer("hf-hub:{name}")
```

or `declip.load("hf-hub:{name}")` -> (model, preprocess, tokenizer). The preprocessing in
open_clip_config.json is exactly `declip eval`'s (shortest side to {m.vision.image_size}, bilinear, centre crop,
ImageNet mean/std), so open_clip and CLIP_benchmark reproduce `declip eval --no-jpeg-draft`.

Tokenizer note: the text tower's vocabulary is open_clip's CLIP BPE (ids 0-49407, SOT 49406, EOT 49407)
plus DeCLIP's MLM mask token at id {MASK_ID} (vocab_size 49409). open_clip's tokenizer is used unchanged: it
never produces id {MASK_ID}. Text features are pooled at the EOT token (text_cfg pool_type "eos",
eos_id {EOT_ID}), as in training.
"""
