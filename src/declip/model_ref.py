"""A model reference -> the files behind it and the architecture they hold: the one resolver that
``model.init_from``, ``declip eval`` and :func:`declip.load` share, so each accepts the same names.

References:

- a declip training checkpoint (``ckpt_*.pt`` / ``best.pt``: a dict with ``model`` and ``config``);
- a weights file (``.safetensors``, or a ``torch.save``'d state dict);
- a folder, or ``local-dir:FOLDER``: ``open_clip_config.json`` plus weights (an open_clip local-dir model, a
  ``declip export`` folder, a ``declip export --hf-hub`` folder);
- ``hf-hub:ORG/NAME`` (``@REVISION`` optional): the Hugging Face Hub layout, read through huggingface_hub's cache
  (``HF_HUB_CACHE`` / ``HF_HOME``); downloaded when not cached and the network is there;
- ``openclip:MODEL/TAG``: open_clip's published weights (its cache, else a download).

Why the network is probed first: without it huggingface_hub retries each file five times with back-off (45 log
lines over ~54 s) before failing; a reference that is not in the cache and cannot be fetched fails here at once,
in one line saying how to get it. Cached files never need the network.

A leaf above the config (it imports only errors and the file-layout names): the config reads a reference's
architecture to fill ``model.*`` (:func:`architecture`), the models layer reads its weights.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .errors import CheckpointError

OPENCLIP_PREFIX = "openclip:"
LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"  # open_clip's own safetensors name (local-dir: and hf-hub: both)
FOLDER_WEIGHTS = (WEIGHTS_NAME, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                  "open_clip_model.bin")  # in open_clip's own order of preference
HF_PATTERNS = [CONFIG_NAME, *FOLDER_WEIGHTS, "README.md", "*.txt"]  # what a model needs from a Hub repository
OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}
# ModelConfig keys that are the architecture (what a reference fixes); the rest are training choices
ARCH_KEYS = ("embed_dim", "quick_gelu", "vision.kind", "vision.image_size", "vision.width", "vision.layers",
             "vision.head_width", "vision.patch_size", "text.context_length", "text.vocab_size", "text.width",
             "text.heads", "text.layers")
OPEN_CLIP_VOCAB = 49408  # CLIP BPE; declip adds the MLM mask token (49409)
# open_clip tower options declip builds as open_clip does (anything else is a tower declip does not build)
_KNOWN = {"vision_cfg": {"image_size", "width", "layers", "head_width", "patch_size", "mlp_ratio"},
          "text_cfg": {"context_length", "vocab_size", "width", "heads", "layers", "pool_type", "eos_id",
                       "proj_bias", "mlp_ratio"}}


@dataclass
class ModelRef:
    """Where a reference's files are. ``kind``: file (``checkpoint`` once read and found to be declip's) |
    folder | openclip. ``config``: the open_clip_config.json contents (folders and openclip: names), else None."""

    spec: str
    kind: str
    path: Path | None = None
    weights: Path | None = None
    config: dict | None = None
    name: str = ""  # openclip: MODEL/TAG
    payload: object = field(default=None, repr=False)  # a file's contents once read (read_file)

    @property
    def where(self) -> str:
        """The file the architecture was read from, for messages."""
        if self.kind == "folder":
            return str(self.path / CONFIG_NAME)
        return self.name if self.kind == "openclip" else str(self.path)


def offline() -> bool:
    """HF_HUB_OFFLINE as the user set it now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in OFFLINE_VALUES or bool(constants.HF_HUB_OFFLINE)


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens: one quick try instead of a library's retries."""
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve(spec: str, what: str = "model.init_from", fetch: bool = True) -> ModelRef:
    """The files behind ``spec``; ``fetch=False``: only what the architecture needs (no weight download)."""
    if spec.startswith(OPENCLIP_PREFIX):
        return _openclip(spec, what, fetch)
    if spec.startswith(HF_HUB_PREFIX):
        return _folder(spec, _hf_snapshot(spec, what), what)
    path = Path(spec.removeprefix(LOCAL_DIR_PREFIX)).expanduser()
    if path.is_dir():
        return _folder(spec, path, what)
    if not path.is_file():
        raise CheckpointError(f"{what}={spec}: {path} does not exist (a declip checkpoint, a weights file, a "
                              "local-dir: folder or a declip export; hf-hub:ORG/NAME or openclip:MODEL/TAG)")
    if spec.startswith(LOCAL_DIR_PREFIX):
        raise CheckpointError(f"{what}={spec}: local-dir: names a folder ({CONFIG_NAME} + weights); drop the "
                              "prefix to load the file itself")
    return ModelRef(spec, "file", path=path, weights=path)


def read_file(ref: ModelRef) -> dict:
    """A weights file's contents, read once (memory-mapped) and kept on ``ref``: a declip training checkpoint (a
    dict with ``model`` and ``config``) comes back verified against its checksums (``ref.kind`` becomes
    ``checkpoint``); an unsafe pickle or a damaged file is one line."""
    if ref.payload is not None:
        return ref.payload
    from .checkpoint_file import read_checkpoint, torch_load_failure, verify_checksums

    path = ref.path
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            ref.payload = load_file(str(path))
        except Exception as e:  # noqa: BLE001  (safetensors raises its own)
            raise CheckpointError(f"{ref.spec}: cannot read {path} as safetensors ({_first_line(e)[:100]})") \
                from None
        return ref.payload
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):  # an old (non-zip) torch file cannot be memory-mapped: read it whole
            raise CheckpointError(torch_load_failure(path, e)) from None
        payload = read_checkpoint(path, require=())
    except Exception as e:  # noqa: BLE001  (pickle, zip and torch each raise their own)
        raise CheckpointError(torch_load_failure(path, e)) from None
    if isinstance(payload, dict) and "model" in payload and "config" in payload:
        verify_checksums(path, payload, remedy="copy the file again or start from an earlier checkpoint")
        ref.kind = "checkpoint"
    ref.payload = payload
    return payload


def _folder(spec: str, path: Path, what: str) -> ModelRef:
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{what}={spec}: no {CONFIG_NAME} in {path} (an open_clip local-dir: folder or a "
                              "declip export holds it next to the weights)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        assert isinstance(config, dict) and isinstance(config.get("model_cfg"), dict)
    except (ValueError, AssertionError):
        raise CheckpointError(f"{what}={spec}: {config_path} is not an open_clip config (JSON with a "
                              "'model_cfg' mapping)") from None
    found = [path / name for name in FOLDER_WEIGHTS if (path / name).is_file()]
    if not found:
        raise CheckpointError(f"{what}={spec}: no {' or '.join(FOLDER_WEIGHTS[::2])} in {path} (an open_clip "
                              f"local-dir: folder holds {CONFIG_NAME} and the weights)")
    return ModelRef(spec, "folder", path=path, weights=found[0], config=config)


def _hf_snapshot(spec: str, what: str) -> Path:
    """The cached snapshot folder of ``hf-hub:ORG/NAME[@REV]``, downloading it first when online."""
    from huggingface_hub import constants, snapshot_download

    repo, _, revision = spec[len(HF_HUB_PREFIX):].partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise CheckpointError(f"{what}={spec}: expected hf-hub:ORG/NAME (optionally @REVISION)")
    try:
        return Path(snapshot_download(repo, revision=revision or None, local_files_only=True,
                                      allow_patterns=HF_PATTERNS))
    except Exception:  # noqa: BLE001  (not cached: LocalEntryNotFoundError and friends)
        pass
    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    if offline():
        raise CheckpointError(f"{what}={spec}: not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set: "
                              f"download it once online (hf download {repo}) or point HF_HUB_CACHE at a copy")
    if not reachable(constants.ENDPOINT):
        raise CheckpointError(f"{what}={spec}: not in the Hugging Face cache ({cache}) and {constants.ENDPOINT} "
                              f"cannot be reached: download it where there is a network (hf download {repo}) and "
                              "copy the cache, or pass a local-dir: folder")
    try:
        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=HF_PATTERNS))
    except Exception as e:  # noqa: BLE001  (HTTP, auth and repository errors differ)
        raise CheckpointError(f"{what}={spec}: cannot download {repo} ({type(e).__name__}: {_first_line(e)})") \
            from None


def _openclip(spec: str, what: str, fetch: bool) -> ModelRef:
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    name, _, tag = spec[len(OPENCLIP_PREFIX):].partition("/")
    if not name or not tag or "/" in tag:
        raise CheckpointError(f"{what}={spec}: expected openclip:MODEL/TAG, e.g. "
                              "openclip:ViT-B-32/laion2b_s34b_b79k (open_clip.list_pretrained())")
    cfg = get_pretrained_cfg(name, tag)
    model_cfg = open_clip.get_model_config(name)
    if not cfg or not model_cfg:
        raise CheckpointError(f"{what}={spec}: open_clip publishes no '{tag}' weights for {name} "
                              "(open_clip.list_pretrained() lists the pairs)")
    model_cfg = {**model_cfg, "quick_gelu": bool(model_cfg.get("quick_gelu") or cfg.get("quick_gelu"))}
    ref = ModelRef(spec, "openclip", config={"model_cfg": model_cfg}, name=f"{name}/{tag}")
    if fetch:  # not when the config is read: a resumed run never needs the weights, and may be offline
        obtainable(spec, cfg, what)
        ref.weights = Path(_published_file(spec, cfg, what))
        ref.path = ref.weights
    return ref


def _published_file(spec: str, cfg: dict, what: str) -> str:
    """open_clip's weights file for a pretrained cfg: its cache when there, else a download."""
    from open_clip.pretrained import download_pretrained

    try:
        return download_pretrained(cfg)
    except Exception as e:  # noqa: BLE001  (hub, HTTP and offline-mode errors differ by backend)
        raise CheckpointError(f"{what}={spec}: cannot download open_clip's weights ({type(e).__name__}: "
                              f"{_first_line(e)[:200]}); download them elsewhere and pass the file or a "
                              "local-dir: folder") from None


def obtainable(spec: str, cfg: dict, what: str) -> None:
    """Raise one line unless open_clip's weights for ``cfg`` are cached or their host can be reached now."""
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import constants, try_to_load_from_cache

        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        names = [filename] if filename else []
        names = [n[:-4] + ".safetensors" for n in names if n.endswith((".bin", ".pth"))] + names
        names += [] if filename else [WEIGHTS_NAME, "open_clip_pytorch_model.bin"]
        cached = any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)
        url = constants.ENDPOINT
    else:
        url = cfg.get("url", "")
        cached = (Path("~/.cache/clip").expanduser() / os.path.basename(url)).is_file()
    if not cached:
        if offline():
            raise CheckpointError(f"{what}={spec}: not in open_clip's cache and HF_HUB_OFFLINE is set: download "
                                  "it once online, or pass the file or a local-dir: folder")
        if not reachable(url):
            raise CheckpointError(f"{what}={spec}: not in open_clip's cache and {urlsplit(url).hostname} cannot "
                                  "be reached (no network?): download the weights where there is one and pass "
                                  "the file or a local-dir: folder")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def architecture(ref: ModelRef) -> dict[str, object]:
    """The reference's architecture as ``model.*`` values by dotted key (:data:`ARCH_KEYS`); empty for a bare
    weights file (no config to read: set ``model.*`` by hand)."""
    if ref.kind in ("file", "checkpoint"):
        state = read_file(ref)
        if ref.kind != "checkpoint":
            return {}
        model = state["config"].get("model", {})
        out = {}
        for key in ARCH_KEYS:
            section, _, name = key.rpartition(".")
            value = model.get(section, {}).get(name) if section else model.get(name)
            if value is not None:
                out[key] = value
        return out
    if ref.config is None:
        return {}
    return from_open_clip_cfg(ref.config["model_cfg"], ref)


def from_open_clip_cfg(mc: dict, ref: ModelRef) -> dict[str, object]:
    """open_clip ``model_cfg`` -> ``model.*`` values. A tower option declip does not build (timm or HF towers,
    other MLP ratios, layer scale, ...) is one line naming it. A config stating no sizes states nothing."""
    if not mc.get("embed_dim"):
        return {}
    for part, known in _KNOWN.items():
        extra = sorted(k for k, v in mc.get(part, {}).items()
                       if k not in known and v not in (None, False, 0, "", {}) and not (k == "mlp_ratio" and v == 4))
        if extra or mc.get(part, {}).get("mlp_ratio", 4) != 4:
            bad = extra[0] if extra else "mlp_ratio"
            raise CheckpointError(f"{ref.spec}: {ref.where}: {part}.{bad}={mc[part].get(bad)!r} is a tower declip "
                                  "does not build (open_clip's ViT/ModifiedResNet and text transformer only)")
    v, t = mc.get("vision_cfg", {}), mc.get("text_cfg", {})
    layers = v.get("layers", 12)
    resnet = isinstance(layers, (list, tuple))
    out = {"embed_dim": mc["embed_dim"], "quick_gelu": bool(mc.get("quick_gelu", False)),
           "vision.kind": "resnet" if resnet else "vit", "vision.image_size": v.get("image_size", 224),
           "vision.width": v.get("width", 768), "vision.layers": list(layers) if resnet else layers,
           "vision.head_width": v.get("head_width", 64),
           "text.context_length": t.get("context_length", 77), "text.width": t.get("width", 512),
           "text.heads": t.get("heads", 8), "text.layers": t.get("layers", 12),
           "text.vocab_size": max(t.get("vocab_size", OPEN_CLIP_VOCAB), OPEN_CLIP_VOCAB + 1)}
    if not resnet:
        out["vision.patch_size"] = v.get("patch_size", 16)
    if isinstance(out["vision.image_size"], (list, tuple)):
        out["vision.image_size"] = out["vision.image_size"][0]
    return out
