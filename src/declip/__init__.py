"""declip: data-efficient CLIP pre-training (DeCLIP, ICLR 2022) on open_clip towers.

The Python API (docs/api.md, or ``declip docs api``)::

    import declip

    cfg = declip.load_config("declip_small_data", {"data.path": "captions.jsonl", "data.root": "images"})
    summary = declip.train(cfg)                                   # as `declip train`: returns its summary
    metrics = declip.evaluate(summary["checkpoint"])              # as `declip eval`: the metrics it prints
    method = declip.build_method(cfg)                             # a method as an nn.Module for your own loop
    losses, metrics = method(declip.make_batch(method, images, captions))

The names load on first use (PEP 562), so ``import declip`` and the ``declip`` command stay fast: torch is
imported by the first call that needs it.
"""
from __future__ import annotations

import sys

from .version import __version__

# the functions (declip.api) and the loss modules, each documented in docs/api.md
_FUNCTIONS = ("load_config", "train", "evaluate", "load", "build_method", "make_batch")
_LOSSES = ("Gathered", "SoftmaxPairLoss", "SigmoidPairLoss", "SimSiamLoss", "NTXentLoss", "MLMLoss",
           "NearestNeighborQueue", "TokenwiseInfoNCE")
__all__ = ["__version__", *_FUNCTIONS, "Config", "ConfigError", *_LOSSES]


def __getattr__(name: str):
    if name == "train":  # the training package, callable as the function (declip/train/__init__.py says why)
        import declip.train  # absolute: `from . import train` would ask this __getattr__ again, endlessly

        value = sys.modules["declip.train"]
    elif name == "load":  # a trained model as open_clip objects (declip/loading.py)
        from .loading import load as value
    elif name in _FUNCTIONS:
        from . import api

        value = getattr(api, name)
    elif name in ("Config", "ConfigError"):
        from . import config

        value = getattr(config, name)
    elif name in _LOSSES:
        from .losses import contrastive, filip, mlm, nn_queue, sigmoid, simclr, simsiam

        modules = (contrastive, filip, mlm, nn_queue, sigmoid, simclr, simsiam)
        value = next(getattr(m, name) for m in modules if hasattr(m, name))
    else:
        raise AttributeError(f"module 'declip' has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
