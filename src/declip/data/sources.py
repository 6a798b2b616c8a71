"""Where (image, caption) pairs come from. Every source is map-style: ``len()`` and ``load(i)``.

``load`` returns an RGB PIL image and a caption, or raises :class:`BadSample` with one of
:data:`SKIP_REASONS`; the dataset then counts the reason and deterministically substitutes another sample,
so a bad file never crashes a run and never goes unnoticed.
"""
from __future__ import annotations


from ..config import DataConfig
from .builtin import BuiltinPairs
from .errors import require_dir

def build_source(cfg: DataConfig, image_size: int | None = None):
    """The configured source. ``image_size`` (the model's input side) lets file sources decode large JPEGs
    at reduced scale; ``None`` decodes at full size.

    Index order (what sample ``i`` is): builtin - generated pair ``i``; manifest - line ``i + 1``;
    csv - data row ``i + 1`` after the header; webdataset - shards in pattern order, tar order inside each.
    The same pairs written in the same order in any format give identical ``load(i)`` results.
    ``data.path`` and ``data.root`` may be URLs (``s3://``, ``gs://``, ``http(s)://``; :mod:`declip.storage`).
    """
    index_dir = cfg.index_dir or None
    if cfg.source in ("manifest", "csv") and cfg.root:
        require_dir(cfg.root, "data.root")
    if cfg.source == "builtin":
        return BuiltinPairs(cfg.builtin_size)
    if cfg.source == "manifest":
        from .manifest import ManifestSource

        return ManifestSource(cfg.path, cfg.root, image_size, index_dir, cfg.max_image_pixels,
                              cfg.allow_outside_root, cfg.max_image_bytes)
    if cfg.source == "csv":
        from .csv_source import CsvSource

        sep = "\t" if cfg.csv_separator == "\\t" else cfg.csv_separator
        return CsvSource(cfg.path, cfg.root, cfg.csv_image_key, cfg.csv_caption_key, sep, image_size, index_dir,
                         cfg.max_image_pixels, cfg.allow_outside_root, cfg.max_image_bytes)
    if cfg.source == "webdataset":
        from .shards import ShardSource

        return ShardSource(cfg.path, image_size, index_dir, max_pixels=cfg.max_image_pixels,
                           max_bytes=cfg.max_image_bytes)
    raise ValueError(f"data.source={cfg.source!r}")  # unreachable: the config's Literal type admits no other
