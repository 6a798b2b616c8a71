"""Zero-shot classification: a classifier from class names x prompt templates (open_clip's builder: mean of
L2-normalised prompt embeddings, renormalised), then top-1/top-5 of normalised image embeddings.

Inputs: the built-in held-out task, and ImageNet in the reference's form (val_official.json JSON lines
{"filename", "label", "label_name"} + a flat image folder) with the 80 OpenAI templates.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip import build_zero_shot_classifier
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..config import Config
from ..data.builtin import BuiltinZeroShot
from ..data.tokenizer import tokenize
from ..data.views import eval_transform

log = logging.getLogger(__name__)


class ImageNetVal(Dataset):
    """val_official.json + flat folder. Bad lines and missing/corrupt images are counted, not fatal."""

    def __init__(self, manifest: str, root: str, transform, max_images: int = 0):
        self.root, self.transform = Path(root), transform
        self.items: list[tuple[str, int]] = []
        self.bad_lines: list[str] = []
        if not Path(manifest).is_file():
            raise FileNotFoundError(f"ImageNet manifest not found: {manifest}")
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageNet image folder not found: {root}")
        with open(manifest, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    label = int(rec["label"])
                    if not 0 <= label < len(IMAGENET_CLASSNAMES):
                        raise ValueError(f"label {label} outside [0, 1000)")
                    self.items.append((str(rec["filename"]), label))
                except (ValueError, KeyError, TypeError) as e:
                    self.bad_lines.append(f"{manifest}:{lineno}: {e}")
        if max_images:
            self.items = self.items[:max_images]
        if self.bad_lines:
            log.warning("%d unusable lines in %s, e.g. %s", len(self.bad_lines), manifest, self.bad_lines[0])

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        name, label = self.items[i]
        try:
            with Image.open(self.root / name) as im:
                image = im.convert("RGB")
        except (OSError, ValueError):
            return torch.zeros(3, 1, 1), -1  # counted as unreadable by the evaluator
        return self.transform(image), label


class BuiltinEval(Dataset):
    def __init__(self, transform, max_images: int = 0):
        self.task, self.transform = BuiltinZeroShot(), transform
        self.n = min(len(self.task), max_images) if max_images else len(self.task)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image, label = self.task.load(i)
        return self.transform(image), label


def _collate(items):
    ok = [(x, y) for x, y in items if y >= 0]
    bad = len(items) - len(ok)
    if not ok:
        return None, None, bad
    return torch.stack([x for x, _ in ok]), torch.tensor([y for _, y in ok]), bad


@torch.no_grad()
def zero_shot_accuracy(clip, dataset: Dataset, classnames, templates, device, batch_size: int = 128,
                       num_workers: int = 0, context_length: int = 77) -> dict[str, float]:
    was_training = clip.training
    clip.eval()
    try:
        classifier = build_zero_shot_classifier(
            clip, lambda texts: tokenize(list(texts), context_length), list(classnames), list(templates),
            num_classes_per_batch=10, device=device)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
        correct1 = correct5 = total = unreadable = 0
        for images, labels, bad in loader:
            unreadable += bad
            if images is None:
                continue
            images, labels = images.to(device), labels.to(device)
            feats = F.normalize(clip.encode_image(images), dim=-1)
            logits = feats @ classifier
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += (top[:, 0] == labels).sum().item()
            correct5 += (top == labels[:, None]).any(dim=1).sum().item()
            total += labels.numel()
    finally:
        clip.train(was_training)
    if total == 0:
        raise RuntimeError("zero-shot evaluation found no readable images")
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "images": total,
            "unreadable": unreadable, "chance": 100.0 / len(classnames)}


def run_zero_shot(clip, cfg: Config, device) -> dict[str, float]:
    """All configured zero-shot tasks -> flat metrics, e.g. {"builtin/top1": 41.2, "imagenet/top1": ...}."""
    transform = eval_transform(cfg.model.vision.image_size)
    ctx, out = cfg.model.text.context_length, {}
    ev = cfg.eval
    if ev.builtin:
        res = zero_shot_accuracy(clip, BuiltinEval(transform, ev.max_images), BuiltinZeroShot.classnames,
                                 BuiltinZeroShot.templates, device, ev.batch_size, ev.num_workers, ctx)
        out.update({f"builtin/{k}": v for k, v in res.items()})
    if ev.val_manifest:
        ds = ImageNetVal(ev.val_manifest, ev.val_root, transform, ev.max_images)
        templates = OPENAI_IMAGENET_TEMPLATES[: ev.imagenet_templates]
        res = zero_shot_accuracy(clip, ds, IMAGENET_CLASSNAMES, templates, device, ev.batch_size,
                                 ev.num_workers, ctx)
        res["bad_lines"] = len(ds.bad_lines)
        out.update({f"imagenet/{k}": v for k, v in res.items()})
    return out
