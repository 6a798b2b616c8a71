"""Training methods, by name. Adding one = one file + one line here."""
from __future__ import annotations

from ..config import Config
from .base import Method


def method_class(name: str) -> type[Method]:
    if name == "clip":
        from .clip import CLIP

        return CLIP
    if name == "declip":
        from .declip import DeCLIP

        return DeCLIP
    if name == "slip":
        from .slip import SLIP

        return SLIP
    if name == "filip":
        from .filip import FILIP

        return FILIP
    if name == "defilip":
        from .defilip import DeFILIP

        return DeFILIP
    raise ValueError(f"unknown method {name!r}")


def build_method(cfg: Config, clip=None) -> Method:
    """The method ``cfg.method.name`` around ``clip`` (open_clip towers), or around towers built from
    ``cfg.model`` when None."""
    return method_class(cfg.method.name)(cfg, clip)
