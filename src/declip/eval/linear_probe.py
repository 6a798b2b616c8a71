"""Linear probe: multinomial logistic regression on frozen, L2-normalised image features (the CLIP paper's
protocol: L-BFGS, the L2 strength chosen on a validation split of the training set, then a refit on all of it).

Objective: mean cross-entropy + ``l2 * ||W||^2`` (bias not penalised). In scikit-learn's terms this is
``LogisticRegression(C=1 / (2 * l2 * n_train))``. The strength is searched the way CLIP describes, coarse then
fine: a decade grid 1e-6..1e2, then half- and quarter-decade steps around the best (ties go to the stronger
penalty, the simpler model). Solved in float64 with torch's L-BFGS (strong-Wolfe line search): no extra
dependency, deterministic on the CPU. Iterations are capped (100 per candidate, 300 for the final fit): with a
very weak penalty on separable features the optimum is at infinity, and the accuracy settles long before.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..config import Config
from ..data.views import eval_transform_uint8
from .common import EvalDataError, EvalImages, check_root, file_images, image_features, progress
from .zeroshot import read_labelled


COARSE_EXPONENTS = tuple(range(-6, 3))  # l2 = 10**e
VAL_FRACTION = 0.2
SEARCH_ITERS = 100  # L-BFGS iterations per candidate strength; the final fit gets 300


@contextlib.contextmanager
def one_thread():
    """These solves are thousands of tiny matmuls: extra intra-op threads only spin (10x slower measured on a
    busy 2-core machine). The caller's thread count is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_logreg(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int = 300):
    """(W [D, C], b [C]) minimising mean CE + l2 * ||W||^2 on features ``x`` [N, D] and labels ``y`` [N]."""
    x = x.double()
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), one_thread():
        opt.step(closure)
    return w.detach(), b.detach()


def predict(model, x: torch.Tensor) -> torch.Tensor:
    w, b = model
    return (x.double() @ w + b).argmax(dim=1)


def _accuracy(model, x, y) -> float:
    return 100.0 * (predict(model, x) == y).double().mean().item()


def select_l2(x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int = 0) -> tuple[float, float]:
    """(best l2, its validation top-1) from a seeded 80/20 split of the training features."""
    n = len(y)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * VAL_FRACTION))
    val, fit = perm[:n_val], perm[n_val:]
    scores: dict[float, float] = {}

    def score(e: float) -> float:
        if e not in scores:
            model = fit_logreg(x[fit], y[fit], num_classes, 10.0 ** e, max_iter=SEARCH_ITERS)
            scores[e] = _accuracy(model, x[val], y[val])
        return scores[e]

    bar = progress(total=len(COARSE_EXPONENTS) + 4, desc="linear probe: choosing l2")  # the fits, on a terminal
    for e in COARSE_EXPONENTS:
        score(e)
        bar.update(1)
    best = max(scores, key=lambda e: (scores[e], e))
    for step in (0.5, 0.25):  # a short binary search around the best decade
        for e in (best - step, best + step):
            score(e)
            bar.update(1)
        best = max(scores, key=lambda e: (scores[e], e))
    bar.close()
    return 10.0 ** best, scores[best]


def linear_probe(train_x, train_y, test_x, test_y, num_classes: int, l2: float | None = None) -> dict[str, float]:
    """Top-1 (and balanced top-1) on the test features; ``l2=None`` validates it on the training set."""
    if len(train_y) < 5:
        raise EvalDataError(f"linear probe: {len(train_y)} readable training images; need at least 5")
    validated = {}
    if l2 is None:
        l2, val_top1 = select_l2(train_x, train_y, num_classes)
        validated["val_top1"] = val_top1  # the chosen strength's accuracy on the held-out 20% of train
    model = fit_logreg(train_x, train_y, num_classes, l2)
    hit = predict(model, test_x) == test_y
    balanced = torch.stack([hit[test_y == c].double().mean() for c in test_y.unique()]).mean()
    return {"top1": 100.0 * hit.double().mean().item(), "balanced_top1": 100.0 * balanced.item(),
            "l2": l2, **validated, "classes": num_classes}


def _probe(clip, cfg: Config, device, train: tuple, test: tuple, what: str) -> dict[str, float]:
    """``train``/``test``: (EvalImages, labels). Features, probe, and the bookkeeping of both sets."""
    ev = cfg.eval
    fx = [image_features(clip, images, device, ev.batch_size, ev.num_workers, f"{what} {split}")
          for (images, _), split in ((train, "train"), (test, "test"))]
    ys = [torch.tensor(labels, dtype=torch.long)[f.index] for (_, labels), f in zip((train, test), fx)]
    num_classes = int(max(ys[0].max(), ys[1].max())) + 1
    res = linear_probe(fx[0].feats, ys[0], fx[1].feats, ys[1], num_classes, ev.probe_l2 if ev.probe_l2 > 0 else None)
    res.update(train_images=int(fx[0].index.numel()), images=int(fx[1].index.numel()),
               unreadable=fx[0].unreadable + fx[1].unreadable)
    return res


def probe_manifest(clip, cfg: Config, device) -> dict[str, float]:
    """Linear probe on ``eval.probe_train_manifest`` (+root) and ``eval.probe_test_manifest`` (+root)."""
    ev = cfg.eval
    sets, bad = [], 0
    for manifest, root in ((ev.probe_train_manifest, ev.probe_train_root),
                           (ev.probe_test_manifest, ev.probe_test_root)):
        man = read_labelled(manifest)
        recs = man.records[: ev.max_images] if ev.max_images else man.records
        if not recs:
            raise EvalDataError(f"{man.path}: no usable line ({len(man.bad)} bad, e.g. {man.bad[:1]})")
        folder = check_root(root, str(man.path))
        images = file_images(folder, [r["filename"] for r in recs], cfg, str(man.path))
        sets.append((images, [r["label"] for r in recs]))
        bad += len(man.bad)
    res = _probe(clip, cfg, device, sets[0], sets[1], "linear probe")
    res["bad_lines"] = bad
    return res


def probe_builtin(clip, cfg: Config, device) -> dict[str, float]:
    """Built-in probe: 500 training scenes of their own stream -> the 500 zero-shot test scenes."""
    from ..data.builtin import BuiltinZeroShot
    from .builtin_sets import PROBE_TRAIN_SEED, PROBE_TRAIN_SIZE, ShapeImages, shape_label

    ev, transform = cfg.eval, eval_transform_uint8(cfg.model.vision.image_size)
    sets = []
    for seed, size in ((PROBE_TRAIN_SEED, PROBE_TRAIN_SIZE), (BuiltinZeroShot().seed, len(BuiltinZeroShot()))):
        n = min(size, ev.max_images) if ev.max_images else size
        sets.append((EvalImages(ShapeImages(seed), n, transform), [shape_label(i) for i in range(n)]))
    return _probe(clip, cfg, device, sets[0], sets[1], "built-in linear probe")
