"""Typed run configuration: dataclasses loaded from YAML, overridden by ``key=value``, validated once.

Every mistake (unknown key, wrong type, impossible value) is reported before any data is read or any
model is built, naming the dotted key and where it came from (the YAML file or the command line), so a
typo in a 32-GPU launch costs seconds, not a queue slot. The model and method sections are in
declip.config_model and declip.config_method (re-exported here: ``from declip.config import ModelConfig``).
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .config_method import DEFAULT_EDA_OPS, METHOD_DEFAULTS, EdaOp, MethodConfig  # noqa: F401  (re-exported)
from .config_model import LOGIT_SCALE_MAX, ModelConfig, PresetName, TextConfig, VisionConfig  # noqa: F401
from .config_model import fill_from_init
from .config_parse import (ACCELERATOR_TYPES, Check, build, coerce, parse_override, record_sources, set_dotted,
                           split_device)
from .errors import ConfigError  # noqa: F401  (re-exported: declip.config.ConfigError)
from .metric_names import TASKS, producible_metrics
from .presets import apply_preset
from .recipes import (default_config_path, demo_config_path, is_shipped,  # noqa: F401  (the two paths: re-exported)
                      own_data_config_path, resolve_config)


EvalTask = Literal["zeroshot", "retrieval", "linear-probe"]  # declip.metric_names.TASKS
assert TASKS == typing.get_args(EvalTask), "EvalTask and metric_names.TASKS must list the same tasks"


# --------------------------------------------------------------------------------------------- sections
@dataclass
class DataConfig:
    source: Literal["builtin", "manifest", "csv", "webdataset"] = "builtin"
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
    # RandomResizedCrop area range [min, max] of the training views; [] = the reference's for the method's views
    # (0.5-1 for CLIP's and method.augment=clip, 0.2-1 for MoCo v2's). open_clip's own training uses 0.9-1.
    crop_scale: list[float] = field(default_factory=list)
    # The second view's crop range, where a method takes two views (DeCLIP); [] = the same as the first view's.
    # A wider range here gives the multi-view term a harder view while the first keeps the one CLIP would see.
    second_view_crop_scale: list[float] = field(default_factory=list)
    # How a crop is resized to the training size: bilinear (the reference's) or bicubic (open_clip's training crop).
    crop_interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    # A sample not read and decoded within this many seconds is skipped as `timeout` (a slow or hung mount);
    # a loader worker silent for data.worker_timeout_s stops the run (see declip.data.bounded).
    sample_timeout_s: float = 60.0
    # The watchdog: no batch from the loader workers this long (a worker stopped, deadlocked, swapping) stops the
    # run in one line, wherever the worker stopped (declip.train.watchdog). 0 = max(300, 10 x sample_timeout_s).
    worker_timeout_s: float = 0.0
    # Filenames stay inside data.root (absolute or '..' ones are skipped as outside_root) unless this is true.
    allow_outside_root: bool = False
    # Larger images are skipped as too_large from the header, before decoding (64 Mpx = 8000 x 8000).
    max_image_pixels: int = 64_000_000
    # Larger image files (local files, remote objects, shard samples) are skipped as too_large from their size,
    # before any byte is read (64 MiB); see declip.data.decode.DEFAULT_MAX_BYTES.
    max_image_bytes: int = 64 * 2**20
    # Remote data (s3:// gs:// http(s)://): each loader worker fetches this many samples ahead on threads while it
    # decodes, hiding the object store's latency (0 = one request at a time). Local data is read in place.
    readahead: int = 8

    def validate(self, check: Check) -> None:
        check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        check(self.sample_timeout_s > 0, "data.sample_timeout_s", "must be > 0 (seconds)")
        check(self.worker_timeout_s >= 0, "data.worker_timeout_s",
              "must be >= 0 (seconds; 0 = max(300, 10 x data.sample_timeout_s))")
        check(self.max_image_pixels > 0, "data.max_image_pixels", "must be > 0 (e.g. 64000000 = 8000 x 8000)")
        check(self.max_image_bytes > 0, "data.max_image_bytes", "must be > 0 (bytes; e.g. 67108864 = 64 MiB)")
        check(0 <= self.readahead <= 256, "data.readahead", "must be in [0, 256] (samples per loader worker)")
        check(0.0 <= self.max_skip_rate <= 1.0, "data.max_skip_rate", "must be in [0, 1]")
        check(len(self.csv_separator) == 1 or self.csv_separator == "\\t", "data.csv_separator",
              "must be one character (a tab, ',', ...; the two characters \\t also mean a tab)")
        check(self.builtin_size > 0, "data.builtin_size", "must be > 0")
        for key in ("crop_scale", "second_view_crop_scale"):
            value = getattr(self, key)
            check(value == [] or (len(value) == 2 and 0 < value[0] <= value[1] <= 1), f"data.{key}",
                  "[] or [min, max] with 0 < min <= max <= 1")

    def required_unset(self) -> list[tuple[str, str]]:
        """(key, why) of each key this data source needs that is empty. Kept apart from :meth:`validate` so that
        ``declip config show`` can print a recipe whose data is not set yet (the key shown as unset, with what
        to set); training refuses to start on the first of them."""
        out = []
        what = {"manifest": "the JSON-lines file", "csv": "the CSV file", "webdataset": "the shard pattern"}
        if self.source in what and not self.path:
            out.append(("data.path", f"data.source={self.source} needs a path: set data.path=PATH "
                                     f"({what[self.source]})"))
        if self.source == "manifest" and not self.root:
            out.append(("data.root", "the manifest's image root is required: set data.root=DIR (the image folder)"))
        return out


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
    # fused AdamW (one kernel; the same math): auto = on CUDA. A fused optimizer also lets a non-finite step be
    # skipped on the device (train.nonfinite=skip), without the host waiting for the device at every step
    fused: Literal["auto", True, False] = "auto"
    # lr, warmup_start_lr and min_lr are for a global batch of base_batch; other batches scale them by
    # (global batch / base_batch) ** 1/2 (sqrt) or ** 1 (linear). none: used as written (the recipe configs).
    lr_scaling: Literal["none", "sqrt", "linear"] = "none"
    base_batch: int = 4096  # the reference's global batch (128 per GPU x 32 GPUs)
    # fine-tuning (train/optim.py): the lr of each part is the scheduled lr times its multiplier; layer_decay d < 1
    # also scales a tower's lock group i of n (input first; models/locks.py) by d ** (n - 1 - i)
    image_lr_mult: float = 1.0
    text_lr_mult: float = 1.0
    heads_lr_mult: float = 1.0  # the heads a method adds: projectors, predictors, SimCLR / MLM / dense heads
    layer_decay: float = 1.0

    def lr_scale(self, global_batch: int) -> float:
        ratio = global_batch / self.base_batch
        return {"none": 1.0, "sqrt": ratio ** 0.5, "linear": ratio}[self.lr_scaling]

    def validate(self, check: Check) -> None:
        check(self.lr > 0, "optim.lr", "must be > 0")
        check(0 <= self.warmup_start_lr <= self.lr, "optim.warmup_start_lr", "must be in [0, optim.lr]")
        check(0 <= self.min_lr <= self.lr, "optim.min_lr", "must be in [0, optim.lr]")
        check(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        check(self.cosine_steps >= 0, "optim.cosine_steps", "must be >= 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas", "two numbers in [0, 1)")
        check(self.eps > 0, "optim.eps", "must be > 0")
        check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        check(self.grad_clip >= 0, "optim.grad_clip", "must be >= 0")
        check(self.base_batch > 0, "optim.base_batch", "must be > 0")
        for part in ("image", "text", "heads"):
            check(getattr(self, f"{part}_lr_mult") > 0, f"optim.{part}_lr_mult",
                  "must be > 0 (to freeze a tower use model.lock_image / model.lock_text)")
        check(0 < self.layer_decay <= 1, "optim.layer_decay", "must be in (0, 1] (1 = off; 0.65-0.85 is usual)")


@dataclass
class TrainConfig:
    steps: int = 600
    batch_size: int = 64  # per device
    grad_accum: int = 1  # micro-batches of batch_size per optimizer step (negatives stay per micro-batch)
    seed: int = 0
    device: str = "auto"  # auto | cpu | a device type (cuda, xpu, mps, npu, hpu, mtia) | TYPE:N (one device,
    # single-process runs; under torchrun each local rank takes its own): declip.device resolves it
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    mode: Literal["full", "performance"] = "full"
    log_every: int = 20
    ckpt_every: int = 200
    keep_last: int = 2
    output_dir: str = "checkpoint/demo"
    tensorboard: bool = True
    progress: bool = True
    nonfinite: Literal["skip", "stop"] = "skip"  # a step with NaN/inf loss or gradients: skip it, or stop
    max_nonfinite_skips: int = 5  # consecutive skipped steps that stop the run (a diverged run skips forever)
    # torch.compile the image and text towers (module.compile(): state_dict keys unchanged); auto = on CUDA only
    compile: Literal["auto", True, False] = "auto"
    grad_checkpointing: bool = False  # open_clip's activation checkpointing in the transformer towers
    channels_last: bool = False  # ResNet towers: weights and images in channels_last (faster convs on GPU)
    sync_bn: bool = False  # SyncBatchNorm across ranks (ResNet tower + SimSiam heads); CUDA only
    dist_timeout_s: int = 3600  # process-group timeout: must outlast rank 0's evaluation while others wait
    peak_tflops: float = 0.0  # one device's peak at train.precision, for the logged MFU; 0 = declip's table by
    # device name (train/mfu.py; none for CPUs and unlisted devices: then only the achieved TFLOP/s is logged)
    # Weights & Biases (the extra declip[wandb]; train/tracking.py): a project name turns it on. Rank 0 logs what
    # TensorBoard gets, the resolved config and every evaluation; --resume continues the same W&B run
    wandb: str = ""
    wandb_name: str = ""  # the W&B run's display name ("" = W&B's own)
    wandb_tags: list[str] = field(default_factory=list)
    wandb_entity: str = ""  # the W&B team or user ("" = the logged-in user's default)

    def validate(self, check: Check) -> None:
        check(self.steps > 0, "train.steps", "must be > 0")
        check(self.batch_size > 1, "train.batch_size", "contrastive learning needs at least 2 pairs per device")
        check(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        check(self.log_every > 0, "train.log_every", "must be > 0")
        check(self.ckpt_every >= 0, "train.ckpt_every", "must be >= 0")
        check(self.keep_last >= 1, "train.keep_last", "must be >= 1")
        check(self.max_nonfinite_skips >= 0, "train.max_nonfinite_skips", "must be >= 0")
        check(self.dist_timeout_s >= 60, "train.dist_timeout_s", "must be >= 60 seconds")
        check(self.peak_tflops >= 0, "train.peak_tflops", "must be >= 0 (0 = from the device table)")
        check(bool(self.output_dir), "train.output_dir", "must not be empty")
        self.validate_wandb(check)
        parsed = split_device(self.device)
        check(parsed is not None and parsed[0] in ("auto", "cpu", *ACCELERATOR_TYPES), "train.device",
              f"{self.device!r}: auto, cpu, or a device type ({', '.join(ACCELERATOR_TYPES)}) with an optional "
              f"index (cuda:1){' (an NVIDIA or AMD GPU: cuda)' if parsed and parsed[0] == 'gpu' else ''}")

    def validate_wandb(self, check: Check) -> None:
        for key in ("wandb", "wandb_entity"):  # W&B refuses these characters in project and entity names
            value = getattr(self, key)
            check(len(value) <= 128 and not any(c in value for c in WANDB_BAD_CHARS), f"train.{key}",
                  f"{value!r}: at most 128 characters, none of {' '.join(WANDB_BAD_CHARS)}")
        for key in ("wandb_name", "wandb_tags", "wandb_entity"):
            check(self.wandb or not getattr(self, key), f"train.{key}",
                  "set train.wandb=PROJECT too (a W&B project name turns W&B logging on)")
        for tag in self.wandb_tags:
            check(0 < len(tag) <= 64, "train.wandb_tags", f"{tag!r}: each tag 1-64 characters (W&B's limit)")


WANDB_BAD_CHARS = ("/", "\\", "#", "?", "%", ":")


@dataclass
class EvalConfig:
    """Evaluation during training and by ``declip eval`` (declip/eval/; metric names: declip/metric_names.py)."""

    every: int = 0  # 0 = only at the end of training
    tasks: list[EvalTask] = field(default_factory=lambda: ["zeroshot"])
    best_metric: str = ""  # the metric that picks best.pt, e.g. val/balanced_top1; "" = the first zero-shot top-1
    builtin: bool = True  # run each task on its built-in held-out set too (default off when training on other data)
    # zero-shot on a labelled manifest (JSON lines {"filename", "label", "label_name"}) + its image folder
    val_manifest: str = ""
    val_root: str = ""
    val_kind: Literal["auto", "imagenet", "generic"] = "auto"  # imagenet: the published protocol; generic: names
    # from label_name or eval.classnames; auto: imagenet when the manifest is ImageNet's
    classnames: str = ""  # generic: a file, one class name per line (line i names label i); "" = label_name
    templates: str = ""  # a named set (openai-imagenet-80, simple) or a file of "{}" templates; "" = openai-imagenet-80
    imagenet_templates: int = 80  # the first N of OpenAI's 80 prompt templates (80 = the published protocol)
    # retrieval: a caption manifest (the training form; several lines or a caption list per image)
    retrieval_manifest: str = ""
    retrieval_root: str = ""
    # linear probe: labelled train and test manifests
    probe_train_manifest: str = ""
    probe_train_root: str = ""
    probe_test_manifest: str = ""
    probe_test_root: str = ""
    probe_l2: float = 0.0  # L2 strength of the probe; 0 = chosen on a validation split (CLIP's protocol)
    batch_size: int = 128
    num_workers: int = 2
    max_images: int = 0  # per evaluation set; 0 = all
    # decode a JPEG that is over twice the input side at reduced DCT scale (fast, as training does); false =
    # exact full-size decoding, as CLIP_benchmark does (moves retrieval R@1 by ~1 point on photos)
    jpeg_draft: bool = True
    # zero-shot and retrieval scores: global = cosine of the pooled features; token = FILIP's token-wise late
    # interaction through the checkpoint's dense heads (filip/defilip with method.filip_weight > 0; eval/tokenwise.py)
    similarity: Literal["global", "token"] = "global"

    def validate(self, check: Check) -> None:
        check(self.every >= 0, "eval.every", "must be >= 0")
        check(self.batch_size > 0, "eval.batch_size", "must be > 0")
        check(self.num_workers >= 0, "eval.num_workers", "must be >= 0")
        check(self.max_images >= 0, "eval.max_images", "must be >= 0 (0 = all)")
        check(1 <= self.imagenet_templates <= 80, "eval.imagenet_templates", "must be in [1, 80]")
        check(bool(self.tasks) and len(set(self.tasks)) == len(self.tasks), "eval.tasks",
              f"{self.tasks!r}: a non-empty list of distinct tasks")
        for manifest, root in (("val_manifest", "val_root"), ("retrieval_manifest", "retrieval_root")):
            check(bool(getattr(self, manifest)) == bool(getattr(self, root)), f"eval.{root}",
                  f"eval.{manifest} and eval.{root} go together")
        probe = ("probe_train_manifest", "probe_train_root", "probe_test_manifest", "probe_test_root")
        given = [k for k in probe if getattr(self, k)]  # named after a key that was set: its source is known
        check(len(given) in (0, 4), f"eval.{given[0] if given else probe[0]}",
              f"the linear probe needs all four of {', '.join('eval.' + k for k in probe)}")
        check(self.probe_l2 >= 0, "eval.probe_l2", "must be >= 0 (0 = validated)")
        check(not (self.classnames and self.val_kind == "imagenet"), "eval.classnames",
              "the ImageNet protocol names its 1000 classes itself; use eval.val_kind=generic for a class-name file")
        if self.best_metric:
            known = producible_metrics(self)
            check(self.best_metric in known, "eval.best_metric",
                  f"{self.best_metric!r} is produced by no configured evaluation (eval.tasks={self.tasks}, "
                  f"eval.builtin={self.builtin}); one of: {', '.join(known) or 'none'}")


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


# ------------------------------------------------------------------------------------------------ loading
def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                allow_unset: bool = False) -> Config:
    """YAML file (optional) + ``key=value`` overrides -> a validated :class:`Config`. ``allow_unset``: a required
    key left empty (``data.path`` of a manifest recipe) is no error; ``DataConfig.required_unset`` lists it."""
    tree: dict = {}
    sources: dict[str, str] = {}
    if path is not None:
        path = resolve_config(path)  # a file, or a shipped recipe's name
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        tree = loaded
        record_sources(tree, str(path), sources)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(tree, key, value)
        sources[key] = f"command line ({item})"
    fill_from_init(tree, sources, user_set)  # model.* from model.init_from's own config, where it has one
    return config_from_dict(tree, sources, allow_unset)


def config_from_dict(tree: dict, sources: dict[str, str] | None = None, allow_unset: bool = False) -> Config:
    sources = dict(sources or {})
    tree = copy.deepcopy(tree)
    model = tree.get("model", {})
    if not isinstance(model, dict):
        raise ConfigError(f"{sources.get('model', 'config')}: model: expected a section")
    preset = coerce(model.get("preset", ModelConfig.preset), PresetName, "model.preset",
                     sources.get("model.preset", "config"))
    tree["model"] = apply_preset(preset, model, sources)
    data, ev = tree.get("data", {}), tree.get("eval", {})
    if isinstance(ev, dict) and "builtin" not in ev and isinstance(data, dict) and \
            data.get("source", DataConfig.source) != "builtin":
        tree["eval"] = {**ev, "builtin": False}  # the built-in shapes task says nothing about a user's data
        sources["eval.builtin"] = f"default for data.source={data.get('source')}"
    method = tree.get("method", {})
    name = method.get("name", MethodConfig.name) if isinstance(method, dict) else None
    if isinstance(name, str) and name in METHOD_DEFAULTS:  # the method's own reference weights and heads
        unset = {k: v for k, v in METHOD_DEFAULTS[name].items() if k not in method}
        tree["method"] = {**method, **unset}
        sources.update({f"method.{k}": f"default for method.name={name}" for k in unset})
    cfg = build(Config, tree, sources)
    explicit_lr_is_the_peak(cfg, sources)
    validate(cfg, sources, allow_unset)
    cfg.origins = sources  # where each value came from (a file, the command line, a preset): logged at start
    return cfg


def user_set(key: str, sources: dict[str, str]) -> bool:
    """Whether the user chose this value (command line or their own file), not a shipped recipe or a default."""
    src = sources.get(key)
    return src is not None and not is_shipped(src) and not src.startswith(("preset ", "default "))


def explicit_lr_is_the_peak(cfg: Config, sources: dict[str, str]) -> None:
    """An ``optim.lr`` the user wrote is the peak lr of the run as written: a recipe's ``optim.lr_scaling``
    scales the recipe's own lr (defined for its base_batch), not the user's. Scaling a user's lr too (issue 31:
    ``optim.lr=5e-4 train.batch_size=64`` on the own-data defaults trained at 6.25e-5) needs the user to
    choose ``optim.lr_scaling`` themselves. The switch is written into the config (and its dump), so a run
    resumed from its config.yaml keeps it."""
    if cfg.optim.lr_scaling != "none" and user_set("optim.lr", sources) and not user_set("optim.lr_scaling",
                                                                                          sources):
        cfg.optim.lr_scaling = "none"
        sources["optim.lr_scaling"] = f"none because optim.lr is set ({sources['optim.lr']})"


def from_preset(cfg: Config) -> dict[str, Any]:
    """The model values a preset filled in (the user set none of them), by dotted key."""
    origins = getattr(cfg, "origins", {})
    out = {}
    for key, src in origins.items():
        if src.startswith("preset "):
            value = cfg
            for part in key.split("."):
                value = getattr(value, part)
            out[key] = value
    return out


def validate(cfg: Config, sources: dict[str, str] | None = None, allow_unset: bool = False) -> None:
    """Every section's own checks; the error names the key and where its value came from. ``allow_unset``
    passes required keys that are still empty (see ``DataConfig.required_unset``)."""
    sources = sources or {}

    def check(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{sources.get(key, 'config')}: {key}: {msg}")

    for section in (cfg.model, cfg.data, cfg.method, cfg.optim, cfg.train, cfg.eval):
        section.validate(check)
    for key, why in [] if allow_unset else cfg.data.required_unset():
        check(False, key, why)
    check(not cfg.data.second_view_crop_scale or cfg.method.name not in ("clip", "filip"),
          "data.second_view_crop_scale",
          f"method.name={cfg.method.name} trains on one image view; set data.crop_scale instead")
    dense = cfg.method.name in ("filip", "defilip") and cfg.method.filip_weight > 0
    why = f"method.name={cfg.method.name} has none" if cfg.method.name not in ("filip", "defilip") else \
        "method.filip_weight=0 builds none"
    check(cfg.eval.similarity == "global" or dense, "eval.similarity",
          f"token needs FILIP's dense heads and {why} (only filip/defilip with method.filip_weight > 0 train "
          "them; an exported open_clip model has none either); use eval.similarity=global")


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
