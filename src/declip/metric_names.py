"""Which evaluations a config asks for and the metric names they produce: pure, import-light (no torch), so the
config loader can refuse ``eval.best_metric=...`` that no configured evaluation would ever report.

Metric names are ``<set>/<metric>``, the sets in run order: for each task of ``eval.tasks``, the file-based set
first (when configured), then its built-in counterpart (when ``eval.builtin``):

=============  ================================  =====================
task           file-based set                    built-in set
=============  ================================  =====================
zeroshot       ``imagenet/`` or ``val/``           ``builtin/``
retrieval      ``retrieval/``                    ``builtin-retrieval/``
linear-probe   ``probe/``                        ``builtin-probe/``
=============  ================================  =====================
"""
from __future__ import annotations

TASKS = ("zeroshot", "retrieval", "linear-probe")
SCORES = {  # the metrics of each task that make sense to maximise (eval.best_metric)
    "zeroshot": ("top1", "top5", "balanced_top1"),
    "retrieval": ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mean_recall"),
    "linear-probe": ("top1", "balanced_top1"),
}
BUILTIN_SET = {"zeroshot": "builtin", "retrieval": "builtin-retrieval", "linear-probe": "builtin-probe"}


def file_sets(ev, task: str) -> tuple[str, ...]:
    """Prefixes the file-based set of ``task`` may report under (two when ``val_kind=auto``: decided by the
    manifest's content)."""
    if task == "zeroshot" and ev.val_manifest:
        return {"imagenet": ("imagenet",), "generic": ("val",)}.get(ev.val_kind, ("imagenet", "val"))
    if task == "retrieval" and ev.retrieval_manifest:
        return ("retrieval",)
    if task == "linear-probe" and ev.probe_train_manifest:
        return ("probe",)
    return ()


def producible_metrics(ev) -> list[str]:
    """Every ``set/metric`` a best_metric may name, in run order."""
    out = []
    for task in ev.tasks:
        sets = list(file_sets(ev, task)) + ([BUILTIN_SET[task]] if ev.builtin else [])
        out += [f"{s}/{m}" for s in sets for m in SCORES.get(task, ())]
    return out


def default_best_metric(results: dict) -> str | None:
    """The first zero-shot top-1 reported; without zero-shot, the first top-1 (linear probe), else the first
    mean recall (retrieval)."""
    zeroshot = {"imagenet", "val", "builtin"}
    for accept in (lambda s, m: s in zeroshot and m == "top1", lambda s, m: m == "top1",
                   lambda s, m: m == "mean_recall"):
        for key in results:
            s, _, m = key.partition("/")
            if accept(s, m):
                return key
    return None
