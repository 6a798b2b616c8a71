"""Where (image, caption) pairs come from. Every source is map-style: ``len()`` and ``load(i)``.

``load`` returns an RGB PIL image and a caption, or raises :class:`BadSample` with one of
:data:`SKIP_REASONS`; the dataset then counts the reason and deterministically substitutes another sample,
so a bad file never crashes a run and never goes unnoticed.
"""
from __future__ import annotations

from ..config import DataConfig
from .builtin import BuiltinPairs

SKIP_REASONS = (
    "missing_file", "empty_file", "corrupt_image", "empty_caption", "non_latin_caption", "bad_line",
)


class BadSample(Exception):
    def __init__(self, reason: str, detail: str = ""):
        assert reason in SKIP_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def build_source(cfg: DataConfig):
    if cfg.source == "builtin":
        return BuiltinPairs(cfg.builtin_size)
    raise NotImplementedError(f"data.source={cfg.source!r} is not available in this build")
