"""The mechanics of reading a config: ``key=value`` parsing, merging, and checking each value against its
dataclass annotation (int, float, str, bool, lists, unions, Literal choices), so that a mistake names the
dotted key and the file or command-line item it came from. The sections themselves are in declip.config
(and its config_model and config_method)."""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from typing import Any, Callable, Literal

import yaml

from .errors import ConfigError

Check = Callable[[bool, str, str], None]  # check(ok, dotted key, message): raises ConfigError naming the source


def deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def set_dotted(tree: dict, key: str, value: Any) -> None:
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


def coerce(value: Any, tp: Any, key: str, src: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int, float, str, bool, list[...], unions)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed:
            return value
        raise ConfigError(f"{src}: {key}: {value!r} is not one of {list(allowed)}")
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return coerce(value, arm, key, src)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{src}: {key}: {value!r} matches none of {tp}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{src}: {key}: expected a list, got {value!r}")
        (arm,) = typing.get_args(tp)
        return [coerce(v, arm, f"{key}[{i}]", src) for i, v in enumerate(value)]
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


def build(cls: type, tree: dict, sources: dict[str, str], prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if k not in names:
            src = sources.get(key) or next((v for s_, v in sources.items() if s_.startswith(key + ".")), "config")
            raise ConfigError(f"{src}: unknown key '{key}' (valid keys here: {', '.join(sorted(names))})")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ConfigError(f"{sources.get(key, 'config')}: {key}: expected a section (mapping), got {v!r}")
            kwargs[k] = build(tp, v, sources, key + ".")
        else:
            kwargs[k] = coerce(v, tp, key, sources.get(key, "config"))
    return cls(**kwargs)


def record_sources(tree: dict, src: str, out: dict, prefix: str = "") -> None:
    for k, v in tree.items():
        out[f"{prefix}{k}"] = src
        if isinstance(v, dict):
            record_sources(v, src, out, f"{prefix}{k}.")


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested config dict as ``{dotted key: value}``."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def show_config(tree: dict, origins: dict[str, str]) -> str:
    """``declip config show``: every key of a resolved config, one per line, with where its value came from
    (default, preset NAME, the file, the command line). A value is written as YAML reads it back."""
    flat = flatten(tree)
    width = max(len(f"{k}: {_scalar(v)}") for k, v in flat.items())
    return "\n".join(f"{f'{k}: {_scalar(v)}':<{width}}  # {origins.get(k, 'default')}" for k, v in flat.items())


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip().removesuffix("\n...").strip()


# The accelerator types train.device may name (torch's device types that train, and npu once torch_npu is
# imported): a misspelling ("gpu") is a config error up front instead of "no GPU device is available here".
ACCELERATOR_TYPES = ("cuda", "xpu", "mps", "npu", "hpu", "mtia")


def split_device(spec: str) -> tuple[str, int | None] | None:
    """``cuda:1`` -> ("cuda", 1), ``cuda`` -> ("cuda", None); None for a malformed value (auto and cpu take no
    index). Shared by the config check and declip.device, so both read a device string the same way."""
    kind, sep, index = spec.partition(":")
    if not kind or not kind.replace("_", "").isalnum() or (sep and (not index.isdigit() or kind in ("auto", "cpu"))):
        return None
    return kind, int(index) if sep else None
