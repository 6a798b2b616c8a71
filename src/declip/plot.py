"""``declip plot RUN_DIR [--out FILE.png]``: training curves from a run's ``metrics.jsonl`` as one PNG.

For a quick look where TensorBoard is not at hand (a cluster login node, a CI artefact, a report). The file is
read with ``read_metrics``, which keeps the last record per step, so a resumed run plots as one history.
Matplotlib runs on the Agg backend: no display needed.
"""
from __future__ import annotations

from pathlib import Path

from .errors import DataError
from .train.metrics import read_metrics

# (title, y label, which train keys, which eval keys); a key ending in '*' is a prefix
PANELS = [
    ("losses (weighted parts and total)", "loss", ["loss", "loss/*"], []),
    ("learning rate", "lr", ["lr"], []),
    ("zero-shot accuracy", "%", [], ["*top1", "*top5"]),
    ("in-batch accuracy", "fraction", ["*_acc"], []),
    ("throughput", "images/s", ["images_per_s"], []),
    ("logit scale", "exp(t)", ["logit_scale"], []),
    ("unusable samples / skipped steps", "count", ["skipped_samples", "nonfinite_steps"], []),
    ("raw (unweighted) losses", "loss", ["*_raw"], []),
]


def _match(key: str, pattern: str) -> bool:
    if pattern.startswith("*"):
        return key.endswith(pattern[1:])
    if pattern.endswith("*"):
        return key.startswith(pattern[:-1])
    return key == pattern


def _series(records: list[dict], patterns: list[str]) -> dict[str, tuple[list[int], list[float]]]:
    out: dict[str, tuple[list[int], list[float]]] = {}
    for rec in records:
        for k, v in rec.items():
            if k in ("step", "time", "kind") or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if any(_match(k, p) for p in patterns):
                xs, ys = out.setdefault(k, ([], []))
                xs.append(int(rec["step"]))
                ys.append(float(v))
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl" if run_dir.is_dir() else run_dir
    if not metrics.is_file():
        raise FileNotFoundError(f"no metrics file at {metrics} (a run directory holds metrics.jsonl)")
    records = read_metrics(metrics)
    train = [r for r in records if r.get("kind", "train") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not train and not evals:  # a run that has not logged its first step yet (or another file)
        raise DataError(f"{metrics}: no train or eval record to plot yet (a run appends one every "
                        "train.log_every steps): plot again once the run has logged a step")
    out = Path(out) if out else metrics.parent / "curves.png"

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = (len(PANELS) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (title, ylabel, train_keys, eval_keys) in zip(axes.flat, PANELS):
        series = {**_series(train, train_keys), **{f"eval {k}": v for k, v in _series(evals, eval_keys).items()}}
        for name, (xs, ys) in sorted(series.items()):
            ax.plot(xs, ys, marker="o" if len(xs) < 3 else None, markersize=3, linewidth=1.2, label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    for ax in list(axes.flat)[len(PANELS):]:
        ax.set_visible(False)
    last = max(int(r["step"]) for r in records)
    fig.suptitle(f"{metrics.parent.name}: {len(train)} train records, {len(evals)} evals, last step {last}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
