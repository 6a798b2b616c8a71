"""Checks that need the file system, run before the model is built: a missing evaluation file must stop a run
at start, not after hours of training."""
from __future__ import annotations

from pathlib import Path

from .. import storage
from ..config import Config
from ..errors import DataError
from ..eval.zeroshot import TEMPLATE_SETS


def check_eval_paths(cfg: Config) -> None:
    """Evaluation files must exist before training starts, not be found missing after hours of it."""
    named_templates = cfg.eval.templates in TEMPLATE_SETS
    for name, value in vars(cfg.eval).items():
        is_file = name.endswith("_manifest") or name == "classnames" or (name == "templates" and not named_templates)
        if isinstance(value, str) and value and (is_file or name.endswith("_root")):
            if storage.is_remote(value):  # the object (or the root's bucket) must answer now, not after training
                (storage.require_object if is_file else storage.require_bucket)(value, f"eval.{name}")
                continue
            path = Path(value)
            if not (path.is_file() if is_file else path.is_dir()):
                raise DataError(f"eval.{name}: {'file' if is_file else 'folder'} not found: {path}")
