"""Zero-shot classification on the built-in task or any labelled manifest.

The classifier is open_clip's builder (per class: prompt embeddings L2-normalised, averaged, renormalised);
images are scored by cosine similarity, or with ``eval.similarity=token`` by FILIP's token-wise similarity
averaged over the prompts (eval/tokenwise.py). Reported: top-1, top-5, balanced top-1 (mean of per-class recalls, the
honest number when classes are imbalanced), chance (100 / classes) and the majority-class rate (what always
answering the most frequent class would score), so a number can be judged without knowing the data.

A labelled manifest is JSON lines ``{"filename", "label", "label_name"}`` (the reference's val_official.json
form) beside an image folder. Two protocols (``eval.val_kind``):

- ``imagenet``: the published one, whatever the manifest says: open_clip's 1000 IMAGENET_CLASSNAMES indexed by
  ``label`` and the first ``eval.imagenet_templates`` of OpenAI's 80 templates; metrics under ``imagenet/``.
- ``generic``: class ``i`` is named by ``eval.classnames`` (a file, line i; it must name labels 0..max) or
  else the classes are the labels that occur, each named by its lines' ``label_name``; templates from
  ``eval.templates`` (default the 80 OpenAI ones); metrics under ``val/``.

``eval.templates`` replaces the prompts under either protocol (ImageNet's published numbers use the default).
- ``auto`` (default): ``imagenet`` when no class-name file is given and every file is an ``ILSVRC2012_val_*``
  image or every ``label_name`` is ImageNet's name for its label; else ``generic``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from open_clip import build_zero_shot_classifier
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

from ..config import Config
from ..data.builtin import BuiltinZeroShot
from ..data.labelled import label_problem
from ..data.tokenizer import tokenize
from ..data.views import eval_transform_uint8
from .common import (EvalDataError, EvalImages, Manifest, check_root, counts, eval_mode, file_images,
                     image_features, read_manifest)
from .tokenwise import TokenTowers, zero_shot_scorer

log = logging.getLogger(__name__)

TEMPLATE_SETS = {"openai-imagenet-80": tuple(OPENAI_IMAGENET_TEMPLATES), "simple": ("a photo of a {}.",)}


# ------------------------------------------------------------------------------------------ the metrics
def zero_shot_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Percentages from [N, C] scores and [N] labels. Balanced top-1 averages the per-class recall over the
    classes that occur in ``labels`` (a class with no image has no recall to average)."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hit1 = top[:, 0] == labels
    per_class = [hit1[labels == c].float().mean() for c in labels.unique()]
    majority = torch.bincount(labels, minlength=num_classes).max()
    return {"top1": 100.0 * hit1.float().mean().item(),
            "top5": 100.0 * (top == labels[:, None]).any(dim=1).float().mean().item(),
            "balanced_top1": 100.0 * torch.stack(per_class).mean().item(),
            "chance": 100.0 / num_classes, "majority": 100.0 * majority.item() / labels.numel(),
            "classes": num_classes}


def classify(clip, images: EvalImages, labels: list[int], classnames, templates, device, batch_size=128,
             num_workers=0, context_length=77, what="zero-shot") -> dict[str, float]:
    """Zero-shot metrics of ``images`` (item i has label ``labels[i]``), plus the readable/unreadable counts.
    Towers with FILIP's dense heads (:class:`TokenTowers`, ``eval.similarity=token``) score token-wise."""
    if isinstance(clip, TokenTowers):
        encode = zero_shot_scorer(clip, classnames, templates, device, context_length)
        feats = image_features(clip, images, device, batch_size, num_workers, what, encode=encode)
        logits = feats.feats
    else:
        with eval_mode(clip):
            classifier = build_zero_shot_classifier(
                clip, lambda texts: tokenize(list(texts), context_length), list(classnames), list(templates),
                num_classes_per_batch=10, device=device).float().cpu()
        feats = image_features(clip, images, device, batch_size, num_workers, what)
        logits = feats.feats @ classifier
    y = torch.tensor(labels, dtype=torch.long)[feats.index]
    return {**zero_shot_metrics(logits, y, len(classnames)), **counts(feats, 0)}


# -------------------------------------------------------------------------------- prompts and classes
def read_lines(path: str | Path, what: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{what} file not found: {path}")
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def load_templates(spec: str, imagenet_templates: int = 80) -> tuple:
    """A named set (``openai-imagenet-80``: the first ``imagenet_templates`` of them; ``simple``) or a file
    with one template per line, each holding ``{}`` where the class name goes."""
    if spec in TEMPLATE_SETS:
        return TEMPLATE_SETS[spec][:imagenet_templates] if spec == "openai-imagenet-80" else TEMPLATE_SETS[spec]
    templates = read_lines(spec, "templates")
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise EvalDataError(f"templates file {spec}: every line needs '{{}}' for the class name "
                            f"({'empty file' if not templates else f'e.g. {bad[0]!r}'})")
    return tuple(templates)


def _check_label(rec: dict) -> None:
    why = label_problem(rec.get("label"))
    if why:
        raise ValueError(why)


def read_labelled(path: str | Path) -> Manifest:
    """A labelled manifest; lines without an integer ``label`` count as bad."""
    return read_manifest(path, _check_label)


def looks_like_imagenet(man: Manifest) -> bool:
    recs = man.records
    if not recs:
        return False
    if all(Path(r["filename"]).name.startswith("ILSVRC2012_val_") for r in recs):
        return True
    return all(r["label"] < 1000 and r.get("label_name") == IMAGENET_CLASSNAMES[r["label"]] for r in recs)


def names_from_manifest(man: Manifest) -> tuple[list[str], dict[int, int]]:
    """(class names, label -> column): the classes are the labels that occur, in label order, each named by
    the ``label_name`` of its lines (a subset of a data set keeps working). A line whose label_name
    contradicts an earlier one is moved to the bad lines (which name would be right?)."""
    names: dict[int, str] = {}
    keep = []
    for r in man.records:
        name = r.get("label_name")
        if isinstance(name, str) and name.strip():
            known = names.setdefault(r["label"], name.strip())
            if known != name.strip():
                man.bad.append(f"{man.path}:{r['_line']}: label_name {name!r} contradicts {known!r} for label "
                               f"{r['label']}")
                continue
        keep.append(r)
    man.records = keep
    labels = sorted({r["label"] for r in keep})
    missing = [c for c in labels if c not in names]
    if missing:
        raise EvalDataError(f"{man.path}: no label_name for label(s) {missing[:10]}: give the class names with "
                            "--classnames FILE (eval.classnames), one per line, line i naming label i")
    return [names[c] for c in labels], {c: j for j, c in enumerate(labels)}


def names_from_file(man: Manifest, path: str) -> list[str]:
    names = read_lines(path, "class names")
    k = max(r["label"] for r in man.records) + 1
    if len(names) != k:
        raise EvalDataError(f"class names file {path} has {len(names)} names, but the labels in {man.path} run "
                            f"0..{k - 1} ({k} classes): it needs one name per line, line i naming label i")
    return names


def protocol(man: Manifest, cfg: Config) -> tuple[str, list[str], tuple, dict[int, int] | None]:
    """(metric prefix, class names, templates, label -> column or None for identity) for a labelled
    manifest under ``eval.val_kind``."""
    ev = cfg.eval
    kind = ev.val_kind
    if kind == "auto":
        kind = "imagenet" if not ev.classnames and looks_like_imagenet(man) else "generic"
    templates = load_templates(ev.templates or "openai-imagenet-80", ev.imagenet_templates)
    if kind == "imagenet":
        for r in [r for r in man.records if r["label"] >= len(IMAGENET_CLASSNAMES)]:
            man.bad.append(f"{man.path}:{r['_line']}: label {r['label']} outside [0, 1000)")
        man.records = [r for r in man.records if r["label"] < len(IMAGENET_CLASSNAMES)]
        return "imagenet", list(IMAGENET_CLASSNAMES), templates, None
    if ev.classnames:
        return "val", names_from_file(man, ev.classnames), templates, None
    names, columns = names_from_manifest(man)
    return "val", names, templates, columns


# ------------------------------------------------------------------------------------------ the runs
def zeroshot_manifest(clip, cfg: Config, device) -> tuple[str, dict[str, float]]:
    """Zero-shot on ``eval.val_manifest`` / ``eval.val_root`` -> (prefix, metrics)."""
    ev = cfg.eval
    man = read_labelled(ev.val_manifest)
    root = check_root(ev.val_root, str(ev.val_manifest))
    if not man.records:
        raise EvalDataError(f"{man.path}: no usable line ({len(man.bad)} bad, e.g. {man.bad[:1]})")
    prefix, names, templates, columns = protocol(man, cfg)
    recs = man.records[: ev.max_images] if ev.max_images else man.records
    labels = [columns[r["label"]] if columns else r["label"] for r in recs]
    images = file_images(root, [r["filename"] for r in recs], cfg, str(man.path))
    res = classify(clip, images, labels, names, templates, device, ev.batch_size,
                   ev.num_workers, cfg.model.text.context_length, str(man.path))
    res["bad_lines"] = len(man.bad)
    return prefix, res


def zeroshot_builtin(clip, cfg: Config, device) -> dict[str, float]:
    """The built-in held-out task: the shape of 500 generated scenes, 10 balanced classes."""
    from .builtin_sets import ShapeImages, shape_label

    ev, task = cfg.eval, BuiltinZeroShot()
    n = min(len(task), ev.max_images) if ev.max_images else len(task)
    images = EvalImages(ShapeImages(task.seed), n, eval_transform_uint8(cfg.model.vision.image_size))
    return classify(clip, images, [shape_label(i) for i in range(n)], task.classnames, task.templates, device,
                    ev.batch_size, ev.num_workers, cfg.model.text.context_length, "built-in zero-shot")

