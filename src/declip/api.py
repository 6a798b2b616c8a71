"""The Python API (``import declip``; docs/api.md): what the ``declip`` command does, as functions, and the
methods as modules for a loop of one's own.

One code path: ``declip train``, ``declip config show`` and ``declip eval`` call these same functions, so a
config loaded here is resolved and checked exactly as on the command line, a run started here takes the
output-folder lock and writes the same logs and checkpoints, and ``evaluate`` returns the metrics that
``declip eval`` prints. Import-light at module level (no torch): ``declip --help`` and ``load_config`` stay
fast; torch loads when a function that needs it runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from . import train  # noqa: F401  (declip.train: the training package, callable as train(cfg, resume=None))
from .config import Config, ConfigError, config_from_dict
from .config import load_config as _load_file
from .recipes import default_config_path
from .vocab import VOCAB_SIZE

Overrides = Sequence[str] | Mapping[str, Any]


def _as_items(overrides: Overrides) -> list[str]:
    """``key=value`` strings from strings or a ``{dotted key: value}`` mapping. A mapping's values are written as
    JSON, which the override parser (YAML) reads back as the same value: ``{"data.path": "a: b.jsonl"}`` stays a
    string, ``{"optim.betas": [0.9, 0.95]}`` a list."""
    if isinstance(overrides, Mapping):
        import json  # here: `declip --help` and `import declip` need no JSON

        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise ConfigError(f"overrides: {overrides!r}: give a list of key=value strings or a mapping, not one string")
    return list(overrides)


def load_config(recipe: str | Path | None = None, overrides: Overrides = (), *, allow_unset: bool = False
                ) -> Config:
    """A validated :class:`~declip.config.Config`, resolved as ``declip train --config RECIPE key=value ...``
    resolves it: ``recipe`` is a shipped recipe's name (``declip configs``) or a YAML file; None is the
    built-in demo, or the own-data defaults when the overrides set ``data.source``. ``overrides`` are
    ``key=value`` strings or a ``{dotted key: value}`` mapping. A mistake raises :class:`ConfigError` naming
    the key and where its value came from. ``allow_unset``: a required key left empty (``data.path`` of a
    manifest recipe) is no error (``declip config show`` prints such a config); :func:`declip.train.run` refuses it."""
    items = _as_items(overrides)
    return _load_file(recipe if recipe is not None else default_config_path(items), items, allow_unset=allow_unset)


# ----------------------------------------------------------------------------------------------- evaluate
def evaluate(model_or_checkpoint, overrides: Overrides = (), *, config: Config | None = None,
             device: str | None = None, progress: bool = False) -> dict[str, float]:
    """The evaluation suite (zero-shot, retrieval, linear probe; docs/evaluation.md) -> the flat metrics
    ``declip eval`` prints as JSON (``{"builtin/top1": ..., "val/top1": ..., "retrieval/i2t_r1": ...}``).

    ``model_or_checkpoint``: a declip checkpoint path (its config says what runs, as ``declip eval`` without
    flags), a declip method (:func:`build_method`: its config; FILIP's dense heads for token similarity) or
    open_clip towers (``config`` or the defaults, with the towers' input size and context length).
    ``overrides``: ``eval.*`` keys only, as strings or a mapping (``{"eval.val_manifest": "labels.jsonl",
    "eval.val_root": "images"}``). ``device``: where to run (default: a model's own device; ``auto`` for a
    checkpoint, as ``declip eval``). ``progress``: bars on a terminal."""
    values, sources = eval_values(_as_items(overrides), "overrides", "override", "evaluate",
                                  "the checkpoint's or the model's")
    return evaluate_with(model_or_checkpoint, values, sources, config=config, device=device, progress=progress)


def eval_values(items, where: str, origin: str, who: str, whose: str) -> tuple[dict, dict[str, str]]:
    """(``eval.*`` values by name, their sources) from ``eval.KEY=VALUE`` items, for :func:`evaluate` and
    ``declip eval`` alike: only the eval section, since the model and the method are ``whose``."""
    from .config_parse import parse_override

    values, sources = {}, {}
    for item in items:
        key, value = parse_override(item)
        section, _, name = key.partition(".")
        if section != "eval" or not name or "." in name:
            raise ConfigError(f"{where}: {item!r}: {who} takes eval.KEY=VALUE overrides only (the model and "
                              f"method are {whose}), e.g. eval.similarity=token")
        values[name], sources[key] = value, f"{origin} ({item})"
    return values, sources


def _no_data(task: str) -> str:
    from .metric_names import BUILTIN_SET

    files = {"zeroshot": "eval.val_manifest/val_root", "retrieval": "eval.retrieval_manifest/retrieval_root",
             "linear-probe": "eval.probe_train_manifest/probe_test_manifest and their roots"}
    return (f"eval.tasks: {task} has no data: set {files[task]}, or eval.builtin=true for the built-in set "
            f"({BUILTIN_SET[task]}/)")


def evaluate_with(target, values: dict, sources: dict[str, str], *, config: Config | None = None,
                  device: str | None = None, progress: bool = False, no_data=_no_data,
                  wise_ft: tuple[str, str] | None = None) -> dict:
    """:func:`evaluate` with the ``eval.*`` values already parsed (``{name: value}``) and their sources named
    (the command line's flags, for ``declip eval``). ``no_data(task)``: the message for a task given no set.
    ``wise_ft=(START, "A,B,...")``: ``{alpha: metrics}`` of each WiSE-FT mix ``(1 - A) * START + A * target``
    (models/wise_ft.py; global similarity: FILIP's dense heads are not mixed)."""
    from .device import resolve_device
    from .eval.common import EvalDataError
    from .eval.suite import _has_files, run_evaluation

    if device is None and hasattr(target, "parameters"):  # a model stays where the caller put it
        device = str(next(target.parameters()).device)
    device = resolve_device(device or "auto")
    clip, tree, dense, state = _towers(target, config, device, values.get("similarity"))
    tree["eval"].update(values)
    cfg = config_from_dict(tree, sources, allow_unset=True)  # ConfigError names the flag or key
    idle = [t for t in cfg.eval.tasks if not _has_files(cfg, t) and not cfg.eval.builtin]
    if idle:
        raise EvalDataError(no_data(idle[0]))
    if cfg.eval.similarity == "token" and dense is None:
        from .eval.tokenwise import load_dense_heads

        if state is None:
            raise ConfigError("eval.similarity=token needs FILIP's dense heads: pass a filip/defilip method or "
                              "checkpoint, not bare open_clip towers")
        dense = load_dense_heads(state, cfg, target).to(device)
    if wise_ft is None:
        return run_evaluation(clip, cfg, device, dense=dense, progress=progress)
    from .models.wise_ft import Interpolation, parse_alphas

    if cfg.eval.similarity == "token":
        raise EvalDataError("--interpolate: WiSE-FT mixes are scored with global similarity (FILIP's dense heads "
                            "are not mixed): drop eval.similarity=token")
    start, alphas = wise_ft
    mixer = Interpolation(clip, start, str(target))
    return {f"{a:g}": run_evaluation(mixer.apply(a), cfg, device, progress=progress) for a in parse_alphas(alphas)}


def _towers(target, config: Config | None, device, similarity: str | None):
    """(towers, config tree, dense heads or None, checkpoint payload or None) for what :func:`evaluate` got."""
    import torch.nn as nn

    from .methods.base import Method

    if isinstance(target, (str, Path)):
        from .errors import CheckpointError
        from .loading import load_for_eval

        try:
            clip, ckpt_cfg, state = load_for_eval(target, device)
        except CheckpointError as e:
            if similarity != "token":
                raise
            raise CheckpointError(f"{e}; eval.similarity=token reads a declip checkpoint (ckpt_*.pt / best.pt of "
                                  "filip or defilip): an exported open_clip model has no dense heads") from e
        return clip, ckpt_cfg.to_dict(), None, state
    if isinstance(target, Method):
        heads = target.eval_heads()
        return target.clip.to(device), (config or target.cfg).to_dict(), \
            heads.to(device) if heads is not None else None, None
    if isinstance(target, nn.Module) and hasattr(target, "encode_image") and hasattr(target, "encode_text"):
        cfg = config_for_model(target, config)
        return target.to(device), cfg.to_dict(), None, None
    raise TypeError(f"evaluate: expected a checkpoint path, a declip method or open_clip towers, got "
                    f"{type(target).__name__}")


# ------------------------------------------------------------------------------------- methods as modules
def model_keys(clip) -> dict[str, Any]:
    """The ``model.*`` values that describe existing open_clip towers (a ``CLIP`` or ``CustomTextCLIP``), so
    that heads, views and tokenisation built from the config fit them."""
    visual = clip.visual
    size = visual.image_size
    keys: dict[str, Any] = {"model.embed_dim": visual.output_dim,
                            "model.vision.image_size": size[0] if isinstance(size, (tuple, list)) else size,
                            "model.text.context_length": clip.context_length}
    if clip.vocab_size >= VOCAB_SIZE:  # OpenAI's 49,408 ids lack the mask token: the config keeps declip's size,
        keys["model.text.vocab_size"] = clip.vocab_size  # used only by the MLM head, which build_method refuses
    if hasattr(visual, "attnpool"):  # open_clip's ModifiedResNet
        width = visual.conv3.out_channels
        keys.update({"model.vision.kind": "resnet", "model.vision.width": width, "model.vision.init": "reference",
                     "model.vision.layers": [len(getattr(visual, f"layer{i}")) for i in range(1, 5)],
                     "model.vision.head_width": width * 32 // visual.attnpool.num_heads})
    else:
        tr = visual.transformer
        keys.update({"model.vision.kind": "vit", "model.vision.width": tr.width, "model.vision.layers": tr.layers,
                     "model.vision.patch_size": visual.patch_size[0],
                     "model.vision.head_width": tr.width // tr.resblocks[0].attn.num_heads})
    text = getattr(clip, "text", None)  # CustomTextCLIP keeps its text tower apart; CLIP holds it inline
    blocks = (text.transformer if text is not None else clip.transformer)
    keys.update({"model.text.width": blocks.width, "model.text.layers": blocks.layers,
                 "model.text.heads": blocks.resblocks[0].attn.num_heads})
    return keys


def config_for_model(clip, config: Config | None = None) -> Config:
    """``config`` (default: declip's defaults) with its model section describing ``clip``, validated again."""
    tree = (config or Config()).to_dict()
    sources = dict(getattr(config, "origins", {}) or {})
    keys = model_keys(clip)
    for key, value in keys.items():
        section, *rest = key.split(".")
        node = tree[section]
        for part in rest[:-1]:
            node = node[part]
        node[rest[-1]] = value
        sources[key] = "the open_clip model given"
    return config_from_dict(tree, sources, allow_unset=True)


def build_method(cfg: Config, model=None):
    """The method ``cfg.method.name`` (clip, declip, slip, filip, defilip) as an ``nn.Module``:
    ``method(batch) -> (losses, metrics)``, the losses already weighted (sum them to train), the metrics
    detached. ``model``: existing open_clip towers to train (``cfg.model`` is rewritten to describe them; the
    method's heads are new), else towers built from ``cfg.model``. Masked-language modelling and FILIP's dense
    term read the text tower's tokens, which need declip's towers (a ``CustomTextCLIP`` with the mask token:
    ``declip.load`` or towers built here); set their weights to 0 to wrap another model. Call
    ``method.after_step()`` after each optimizer step (the logit-scale clamp, the step count)."""
    from .methods import build_method as build

    if model is None:
        return build(cfg)
    cfg = config_for_model(model, cfg)
    m = cfg.method
    needs_tokens = [k for k, on in (("method.mlm_weight", m.name in ("declip", "defilip") and m.mlm_weight > 0),
                                    ("method.filip_weight", m.name in ("filip", "defilip") and m.filip_weight > 0))
                    if on]
    if needs_tokens and (getattr(model, "text", None) is None or model.vocab_size < VOCAB_SIZE):
        raise ConfigError(f"{needs_tokens[0]}: this term reads text tokens that only declip's towers give (a "
                          f"CustomTextCLIP with {VOCAB_SIZE} ids, the mask token included); set "
                          f"{needs_tokens[0]}=0 to wrap this model")
    return build(cfg, model)


class _Pairs:
    """A data source over in-memory pairs: PIL images (or image files) and their captions."""

    def __init__(self, images: Sequence, captions: Sequence[str]):
        if len(images) != len(captions):
            raise ValueError(f"make_batch: {len(images)} images but {len(captions)} captions")
        self.images, self.captions = list(images), list(captions)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int):
        from PIL import Image

        image = self.images[i]
        image = Image.open(image) if isinstance(image, (str, Path)) else image
        return image.convert("RGB"), self.captions[i]

    def key(self, i: int) -> str:
        return f"pair {i}"


def make_batch(method, images: Sequence, captions: Sequence[str], *, seed: int = 0, device=None) -> dict:
    """The batch ``method(batch)`` takes, made as training makes it (the method's views and text views, seeded
    per pair): ``images`` float [B, V, 3, H, W] (V views: 1 for CLIP and FILIP, 2 for DeCLIP, 3 for SLIP),
    ``text`` token ids [B, context_length] and, as the method needs them, ``text_aug`` (the EDA caption),
    ``text_plain``, ``mlm_labels`` / ``mlm_index`` (masked language modelling) and ``index`` (the pair's
    position, for the nearest-neighbour queue's own-caption rule). ``images``: PIL images or image files."""
    from .data.device_augment import build_device_stage
    from .data.loader import PairDataset, collate

    cfg = method.cfg
    spec = method.data_spec(cfg).with_user_crops(cfg.data)
    data = PairDataset(_Pairs(images, captions), spec, cfg.model.vision.image_size, seed)
    batch = collate([data[i] for i in range(len(data))])
    for key in ("skips", "skip_examples"):
        batch.pop(key)
    if device is None:
        device = next(method.parameters()).device
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    return build_device_stage(spec, cfg.model.vision.image_size)(batch)

