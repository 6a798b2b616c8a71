"""The training layer (trainer, checkpoints, logs, run folders), and ``declip.train(cfg, resume=None)`` itself.

Why this package is callable: the Python API's ``declip.train`` (docs/api.md) and this package share the name.
Python binds a package to its parent's attribute when it is first imported, so a function ``declip.train`` would
be replaced by this package as soon as anything imported ``declip.train.trainer``. The package is therefore the
function: calling it runs :func:`run` (its class is a ModuleType subclass, the documented way to give a module
behaviour), and ``declip.train.trainer`` and every other submodule import as before. Import-light: nothing is
imported until a run starts.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path


def run(cfg, resume: str | None = None, *, overwrite: bool = False, allow_config_change: bool = False) -> dict:
    """Run training as ``declip train`` does (one run per ``train.output_dir``: its lock, train.log,
    metrics.jsonl, checkpoints, evaluation at the end) and return the closing summary: ``step``, ``eval`` (the
    last evaluation's metrics), ``checkpoint`` (the last one's path), ``best`` (``metric``, ``value``, ``step``,
    ``path``) where a best.pt was kept, skip and timing counts. ``cfg``: a Config, or a recipe name / YAML file.
    ``resume``: ``latest``, ``latest-or-new``, ``best`` or a checkpoint path, as ``--resume``."""
    from ..config import Config, load_config, validate

    if isinstance(cfg, (str, Path)):
        cfg = load_config(cfg)
    if not isinstance(cfg, Config):
        raise TypeError(f"declip.train: expected a Config or a recipe name / YAML file, got {type(cfg).__name__}")
    validate(cfg, getattr(cfg, "origins", {}))  # a config loaded with allow_unset: a required key is still empty
    from .tracking import check_tracker_installed

    check_tracker_installed(cfg)  # train.wandb without wandb installed: one line, before torch loads
    from .trainer import train

    return train(cfg, resume=resume, overwrite=overwrite, allow_config_change=allow_config_change)


class _TrainPackage(types.ModuleType):
    def __call__(self, cfg, resume: str | None = None, *, overwrite: bool = False,
                 allow_config_change: bool = False) -> dict:
        return run(cfg, resume, overwrite=overwrite, allow_config_change=allow_config_change)


sys.modules[__name__].__class__ = _TrainPackage
