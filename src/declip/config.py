"""Typed run configuration: dataclasses loaded from YAML, overridden by ``key=value``, validated once.

Every mistake (unknown key, wrong type, impossible value) is reported before any data is read or any
model is built, naming the dotted key and where it came from (the YAML file or the command line), so a
typo in a 32-GPU launch costs seconds, not a queue slot.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key and its source."""


# --------------------------------------------------------------------------------------------- sections
@dataclass
class VisionConfig:
    kind: str = "vit"  # vit | resnet
    image_size: int = 64
    width: int = 128  # ViT width, or ResNet stem width (64 for RN50)
    layers: int | list[int] = 2  # ViT depth, or ResNet stage depths (RN50: [3, 4, 6, 3])
    head_width: int = 64
    patch_size: int = 8
    freeze_conv1: bool = True  # DeCLIP freezes the ViT patch embedding


@dataclass
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49409  # CLIP BPE (49408) + the MLM mask token
    width: int = 128
    heads: int = 2
    layers: int = 2


@dataclass
class ModelConfig:
    preset: str = "tiny-vit"  # fills the fields below unless they are set explicitly; see PRESETS
    embed_dim: int = 128
    quick_gelu: bool = True
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)


@dataclass
class DataConfig:
    source: str = "builtin"  # builtin | manifest | csv | webdataset
    path: str = ""  # manifest / csv file, or webdataset shard pattern
    root: str = ""  # image root for manifest / csv
    builtin_size: int = 20000  # number of generated training pairs
    num_workers: int = 2
    csv_image_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_separator: str = "\t"
    max_skip_rate: float = 0.05  # stop the run when more than this share of samples is unusable
    pin_memory: bool = True
    index_dir: str = ""  # where byte-offset indexes go ("" = beside the data file, else ~/.cache/declip/index)


@dataclass
class MethodConfig:
    name: str = "declip"  # clip | declip
    # DeCLIP loss weights (reference: 0.4 / 0.2 / 0.2 / 0.2). 0 skips that branch's computation.
    clip_weight: float = 0.4
    simsiam_weight: float = 0.2
    mlm_weight: float = 0.2
    nn_weight: float = 0.2
    mask_prob: float = 0.15
    queue_size: int = 65536
    nn_warmup_steps: int = 0
    simsiam_proj_dim: int = 1024
    simsiam_pred_dim: int = 512
    eda_ops: list[str] = field(default_factory=lambda: ["synonym", "swap", "delete"])
    local_loss: bool = False  # each rank: local rows vs. gathered columns (always); True skips the gather
    # DeCLIP small-data knobs (issue 12); the defaults are the reference method.
    multi_view: bool = True  # False: the contrastive term uses view 1 x the original caption only (ablation)
    augment: str = "mocov2"  # image views: mocov2 (reference) | clip (RandomResizedCrop 0.5-1 only)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    warmup_start_lr: float = 1e-4
    min_lr: float = 0.0
    warmup_steps: int = 50
    cosine_steps: int = 0  # length of the warm-up + cosine schedule; 0 = train.steps
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 0.0  # 0 = off (reference behaviour)


@dataclass
class TrainConfig:
    steps: int = 600
    batch_size: int = 64  # per device
    grad_accum: int = 1  # micro-batches of batch_size per optimizer step (negatives stay per micro-batch)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 | fp16
    mode: str = "full"  # full | performance
    log_every: int = 20
    ckpt_every: int = 200
    keep_last: int = 2
    output_dir: str = "checkpoint/demo"
    tensorboard: bool = True
    progress: bool = True
    nonfinite: str = "skip"  # skip | stop
    compile: bool = False  # torch.compile the image and text towers (module.compile(): state_dict keys unchanged)
    grad_checkpointing: bool = False  # open_clip's activation checkpointing in the transformer towers
    channels_last: bool = False  # ResNet towers: weights and images in channels_last (faster convs on GPU)
    sync_bn: bool = False  # SyncBatchNorm across ranks (ResNet tower + SimSiam heads); CUDA only
    dist_timeout_s: int = 3600  # process-group timeout: must outlast rank 0's evaluation while others wait


@dataclass
class EvalConfig:
    every: int = 0  # 0 = only at the end of training
    builtin: bool = True  # the built-in held-out zero-shot task
    val_manifest: str = ""  # ImageNet val_official.json (JSON lines)
    val_root: str = ""  # flat folder of ImageNet val images
    batch_size: int = 128
    num_workers: int = 2
    max_images: int = 0  # 0 = all
    imagenet_templates: int = 80  # the first N of OpenAI's 80 prompt templates (80 = the published protocol)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------ model presets
PRESETS: dict[str, dict] = {
    "tiny-vit": {
        "embed_dim": 128,
        "vision": {"kind": "vit", "image_size": 64, "width": 128, "layers": 2, "head_width": 64, "patch_size": 8},
        "text": {"width": 128, "heads": 2, "layers": 2},
    },
    "vit-b-32": {
        "embed_dim": 512,
        "vision": {"kind": "vit", "image_size": 224, "width": 768, "layers": 12, "head_width": 64, "patch_size": 32},
        "text": {"width": 512, "heads": 8, "layers": 12},
    },
    "rn50": {
        "embed_dim": 1024,
        "vision": {"kind": "resnet", "image_size": 224, "width": 64, "layers": [3, 4, 6, 3], "head_width": 64},
        "text": {"width": 512, "heads": 8, "layers": 12},
    },
    "tiny-rn": {
        "embed_dim": 128,
        "vision": {"kind": "resnet", "image_size": 64, "width": 16, "layers": [1, 1, 1, 1], "head_width": 32},
        "text": {"width": 128, "heads": 2, "layers": 2},
    },
}

CHOICES = {
    "model.preset": set(PRESETS),
    "model.vision.kind": {"vit", "resnet"},
    "data.source": {"builtin", "manifest", "csv", "webdataset"},
    "method.name": {"clip", "declip"},
    "method.augment": {"mocov2", "clip"},
    "train.device": {"auto", "cpu", "cuda"},
    "train.precision": {"fp32", "bf16", "fp16"},
    "train.mode": {"full", "performance"},
    "train.nonfinite": {"skip", "stop"},
}


# ------------------------------------------------------------------------------------------------ loading
def _deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"command line: {key}: '{p}' is not a section")
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``optim.lr=5e-4`` -> ("optim.lr", 0.0005); values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(f"command line: '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw  # not YAML (e.g. a bare ","): keep the text; the type check still applies
    return key.strip(), value


def _coerce(value: Any, tp: Any, key: str, src: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int, float, str, bool, list[...], unions)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return _coerce(value, arm, key, src)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{src}: {key}: {value!r} matches none of {tp}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{src}: {key}: expected a list, got {value!r}")
        (arm,) = typing.get_args(tp)
        return [_coerce(v, arm, f"{key}[{i}]", src) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{src}: {key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{src}: {key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{src}: {key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{src}: {key}: expected a string, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{src}: {key}: expected null, got {value!r}")
    raise ConfigError(f"{src}: {key}: unsupported type {tp}")


def _build(cls: type, tree: dict, sources: dict[str, str], prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if k not in names:
            src = sources.get(key, "config")
            raise ConfigError(f"{src}: unknown key '{key}' (valid keys here: {', '.join(sorted(names))})")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ConfigError(f"{sources.get(key, 'config')}: {key}: expected a section (mapping), got {v!r}")
            kwargs[k] = _build(tp, v, sources, key + ".")
        else:
            kwargs[k] = _coerce(v, tp, key, sources.get(key, "config"))
    return cls(**kwargs)


def _record_sources(tree: dict, src: str, out: dict, prefix: str = "") -> None:
    for k, v in tree.items():
        out[f"{prefix}{k}"] = src
        if isinstance(v, dict):
            _record_sources(v, src, out, f"{prefix}{k}.")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """YAML file (optional) + ``key=value`` overrides -> a validated :class:`Config`."""
    tree: dict = {}
    sources: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        tree = loaded
        _record_sources(tree, str(path), sources)
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
        sources[key] = f"command line ({item})"
    return config_from_dict(tree, sources)


def config_from_dict(tree: dict, sources: dict[str, str] | None = None) -> Config:
    sources = dict(sources or {})
    tree = copy.deepcopy(tree)
    model = tree.get("model", {})
    if not isinstance(model, dict):
        raise ConfigError(f"{sources.get('model', 'config')}: model: expected a section")
    preset = model.get("preset", ModelConfig.preset)
    if preset not in PRESETS:
        raise ConfigError(f"{sources.get('model.preset', 'config')}: model.preset: {preset!r} is not one of "
                          f"{sorted(PRESETS)}")
    tree["model"] = _deep_merge(PRESETS[preset], model)
    cfg = _build(Config, tree, sources)
    validate(cfg, sources)
    return cfg


def validate(cfg: Config, sources: dict[str, str] | None = None) -> None:
    sources = sources or {}

    def check(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{sources.get(key, 'config')}: {key}: {msg}")

    for key, allowed in CHOICES.items():
        section, *rest = key.split(".")
        value = getattr(cfg, section)
        for part in rest:
            value = getattr(value, part)
        check(value in allowed, key, f"{value!r} is not one of {sorted(allowed)}")

    v, t = cfg.model.vision, cfg.model.text
    check(cfg.model.embed_dim > 0, "model.embed_dim", "must be > 0")
    check(v.image_size >= 16, "model.vision.image_size", "must be >= 16")
    if v.kind == "vit":
        check(isinstance(v.layers, int) and v.layers > 0, "model.vision.layers", "a ViT needs one positive depth")
        check(v.image_size % v.patch_size == 0, "model.vision.patch_size",
              f"image_size {v.image_size} is not divisible by patch_size {v.patch_size}")
        check(v.width % v.head_width == 0, "model.vision.head_width", "must divide model.vision.width")
    else:
        check(isinstance(v.layers, list) and len(v.layers) == 4 and min(v.layers) > 0, "model.vision.layers",
              "a ResNet needs four positive stage depths, e.g. [3, 4, 6, 3]")
        check(v.image_size % 32 == 0, "model.vision.image_size", "a ResNet needs a multiple of 32")
    check(t.width % t.heads == 0, "model.text.heads", f"must divide model.text.width ({t.width})")
    check(t.context_length >= 8, "model.text.context_length", "must be >= 8")
    check(t.vocab_size >= 49409, "model.text.vocab_size", "must hold the CLIP BPE vocabulary + mask token (49409)")

    d = cfg.data
    check(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    check(0.0 <= d.max_skip_rate <= 1.0, "data.max_skip_rate", "must be in [0, 1]")
    check(len(d.csv_separator) == 1 or d.csv_separator == "\\t", "data.csv_separator",
          "must be one character (a tab, ',', ...; the two characters \\t also mean a tab)")
    check(d.builtin_size > 0, "data.builtin_size", "must be > 0")
    if d.source in ("manifest", "csv", "webdataset"):
        check(bool(d.path), "data.path", f"data.source={d.source} needs a path")
    if d.source in ("manifest", "csv"):
        check(bool(d.root) or d.source == "csv", "data.root", "the manifest's image root is required")

    m = cfg.method
    for w in ("clip_weight", "simsiam_weight", "mlm_weight", "nn_weight"):
        check(getattr(m, w) >= 0, f"method.{w}", "must be >= 0")
    check(0.0 < m.mask_prob < 1.0, "method.mask_prob", "must be in (0, 1)")
    check(m.queue_size > 0, "method.queue_size", "must be > 0")
    check(m.nn_warmup_steps >= 0, "method.nn_warmup_steps", "must be >= 0")
    check(set(m.eda_ops) <= {"synonym", "swap", "delete", "insert"} and len(m.eda_ops) > 0, "method.eda_ops",
          "a non-empty subset of synonym, swap, delete, insert")
    if m.name == "declip":
        check(m.clip_weight + m.simsiam_weight + m.mlm_weight + m.nn_weight > 0, "method.clip_weight",
              "all DeCLIP loss weights are 0")

    o = cfg.optim
    check(o.lr > 0, "optim.lr", "must be > 0")
    check(0 <= o.warmup_start_lr <= o.lr, "optim.warmup_start_lr", "must be in [0, optim.lr]")
    check(0 <= o.min_lr <= o.lr, "optim.min_lr", "must be in [0, optim.lr]")
    check(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    check(o.cosine_steps >= 0, "optim.cosine_steps", "must be >= 0")
    check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", "two numbers in [0, 1)")
    check(o.eps > 0, "optim.eps", "must be > 0")
    check(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    check(o.grad_clip >= 0, "optim.grad_clip", "must be >= 0")

    tr = cfg.train
    check(tr.steps > 0, "train.steps", "must be > 0")
    check(tr.batch_size > 1, "train.batch_size", "contrastive learning needs at least 2 pairs per device")
    check(tr.grad_accum >= 1, "train.grad_accum", "must be >= 1")
    check(tr.log_every > 0, "train.log_every", "must be > 0")
    check(tr.ckpt_every >= 0, "train.ckpt_every", "must be >= 0")
    check(tr.keep_last >= 1, "train.keep_last", "must be >= 1")
    check(tr.dist_timeout_s >= 60, "train.dist_timeout_s", "must be >= 60 seconds")
    check(bool(tr.output_dir), "train.output_dir", "must not be empty")
    check(cfg.eval.every >= 0, "eval.every", "must be >= 0")
    check(cfg.eval.batch_size > 0, "eval.batch_size", "must be > 0")
    check(1 <= cfg.eval.imagenet_templates <= 80, "eval.imagenet_templates", "must be in [1, 80]")
    check(bool(cfg.eval.val_manifest) == bool(cfg.eval.val_root), "eval.val_root",
          "eval.val_manifest and eval.val_root go together")


def demo_config_path() -> Path:
    """The built-in demo (DeCLIP, tiny towers, generated data): what ``declip train`` runs without --config."""
    return Path(__file__).parent / "configs" / "demo.yaml"


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
