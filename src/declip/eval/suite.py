"""The evaluation suite: one entry point for the trainer and the CLI.

``run_evaluation(clip, cfg, device)`` runs every configured task (``eval.tasks``) on its file-based set and/or
its built-in set and returns one flat dict ``{"builtin/top1": 41.2, "retrieval/i2t_r1": ..., ...}`` (names:
:mod:`declip.metric_names`), which the trainer writes to metrics.jsonl and TensorBoard as it is.
``best_metric(results, cfg)`` says which number decides ``best.pt``.

A checkpoint's towers alone (no SimSiam/MLM heads, no NN queue) come from :func:`declip.export.load_towers`;
FILIP's dense heads, for ``eval.similarity=token``, from :func:`declip.eval.tokenwise.load_dense_heads`.
"""
from __future__ import annotations

import logging

from ..config import Config
from ..metric_names import BUILTIN_SET, default_best_metric
from .common import EvalDataError, show_progress

log = logging.getLogger(__name__)


def _file_run(task: str):
    from .linear_probe import probe_manifest
    from .retrieval import retrieval_manifest
    from .zeroshot import zeroshot_manifest

    if task == "zeroshot":
        return zeroshot_manifest  # returns (prefix, metrics): imagenet/ or val/
    return {"retrieval": lambda *a: ("retrieval", retrieval_manifest(*a)),
            "linear-probe": lambda *a: ("probe", probe_manifest(*a))}[task]


def _builtin_run(task: str):
    from .linear_probe import probe_builtin
    from .retrieval import retrieval_builtin
    from .zeroshot import zeroshot_builtin

    return {"zeroshot": zeroshot_builtin, "retrieval": retrieval_builtin, "linear-probe": probe_builtin}[task]


def _has_files(cfg: Config, task: str) -> bool:
    ev = cfg.eval
    return bool({"zeroshot": ev.val_manifest, "retrieval": ev.retrieval_manifest,
                 "linear-probe": ev.probe_train_manifest}[task])


def run_evaluation(clip, cfg: Config, device, tasks=None, dense=None, progress: bool = False) -> dict[str, float]:
    """All configured evaluations of ``clip`` (eval mode, no autograd; the caller's mode is restored).
    ``tasks`` overrides ``eval.tasks``. ``dense``: FILIP's dense heads, read when ``eval.similarity=token``
    (zero-shot and retrieval score token-wise; the linear probe keeps the global features). ``progress``:
    progress bars on a terminal (``declip eval``; off during training). Raises :class:`EvalDataError` for
    unusable inputs."""
    with show_progress(progress):
        return _run(clip, cfg, device, tasks, dense)


def _run(clip, cfg: Config, device, tasks, dense) -> dict[str, float]:
    if cfg.eval.similarity == "token":
        from .tokenwise import token_towers

        clip = token_towers(clip, dense)
    out: dict[str, float] = {}
    for task in tasks or cfg.eval.tasks:
        if _has_files(cfg, task):
            prefix, res = _file_run(task)(clip, cfg, device)
            out.update({f"{prefix}/{k}": v for k, v in res.items()})
        if cfg.eval.builtin:
            res = _builtin_run(task)(clip, cfg, device)
            out.update({f"{BUILTIN_SET[task]}/{k}": v for k, v in res.items()})
    return out


def best_metric(results: dict, cfg: Config) -> tuple[str, float] | None:
    """(name, value) of the metric that selects best.pt: ``eval.best_metric``, or by default the first
    zero-shot top-1. None when nothing was evaluated."""
    name = cfg.eval.best_metric or default_best_metric(results)
    if name is None or not results:
        return None
    if name not in results:
        raise EvalDataError(f"eval.best_metric={name!r} is not among the evaluation results "
                            f"({sorted(k for k in results if k.endswith(('top1', 'r1', 'mean_recall')))})")
    return name, float(results[name])


def headline(results: dict) -> dict[str, float]:
    """The numbers worth a log line (accuracies, recalls, chance), rounded."""
    keep = ("top1", "top5", "balanced_top1", "chance", "majority", "_r1", "_r5", "_r10", "mean_recall")
    return {k: round(v, 2) for k, v in results.items() if k.endswith(keep)}
