"""Image <-> text retrieval: recall@1/5/10 on a held-out caption manifest (the training manifest form).

The standard protocol (COCO / Flickr30k, as open_clip and CLIP_benchmark compute it) with several captions per
image: images are de-duplicated by filename, each caption is a query of its own.

- text -> image R@k: share of captions whose image is among the k images most similar to it;
- image -> text R@k: share of images with at least one of their captions among the k most similar captions.

Captions per image may come as several lines with the same ``filename`` (COCO/Flickr style) or as a list in
``caption``. Unusable captions (empty, no Latin letter) are skipped and counted as in training; an unreadable
image takes its captions with it (they would be unanswerable queries), counted under ``unreadable``.

``eval.similarity=token`` (FILIP/DeFILIP): image -> text ranks by the i2t token-wise similarity, text -> image
by the t2i one (eval/tokenwise.py).
"""
from __future__ import annotations

import torch

from ..config import Config
from ..data.decode import check_caption
from ..data.errors import BadSample
from ..data.views import eval_transform_uint8
from .common import (EvalDataError, EvalImages, check_root, counts, file_images, image_features,
                     read_manifest, text_features)
from .tokenwise import TokenTowers, retrieval_scorer

KS = (1, 5, 10)


def recall_at_k(sim: torch.Tensor, text_image: torch.Tensor, ks=KS, sim_i2t: torch.Tensor | None = None
                ) -> dict[str, float]:
    """Percentages from ``sim`` [T texts, I images] and ``text_image`` [T] (the image index of each text).
    ``sim_i2t`` [I, T] ranks the captions of each image when the two directions score differently (token-wise
    i2t vs t2i); default ``sim.T``. Ties are broken by index (torch.topk), which only matters for degenerate
    features."""
    n_text, n_image = sim.shape
    sim_i2t = sim.T if sim_i2t is None else sim_i2t
    positive = text_image[None, :] == torch.arange(n_image)[:, None]  # [I, T]: text t describes image i
    out = {}
    for k in ks:
        top_texts = sim_i2t.topk(min(k, n_text), dim=1).indices  # [I, k]
        out[f"i2t_r{k}"] = 100.0 * positive.gather(1, top_texts).any(dim=1).float().mean().item()
    for k in ks:
        top_images = sim.topk(min(k, n_image), dim=1).indices  # [T, k]
        out[f"t2i_r{k}"] = 100.0 * (top_images == text_image[:, None]).any(dim=1).float().mean().item()
    out["mean_recall"] = sum(out.values()) / len(out)
    return out


def retrieval_metrics(image_feats: torch.Tensor, text_feats: torch.Tensor, text_image: torch.Tensor,
                      ks=KS) -> dict[str, float]:
    """Recall@k of L2-normalised features (cosine similarity)."""
    return recall_at_k(text_feats @ image_feats.T, text_image, ks)


def _check_record(rec: dict) -> None:
    if "caption" not in rec:
        raise KeyError("missing key 'caption'")
    if not isinstance(rec["caption"], (str, list)):
        raise TypeError(f"'caption' must be a string or a list, got {type(rec['caption']).__name__}")


def group_captions(records: list[dict], where: str) -> tuple[list[str], list[list[str]], dict[str, int]]:
    """(image filenames in first-seen order, their usable captions, skipped captions by reason)."""
    order: dict[str, list[str]] = {}
    skipped: dict[str, int] = {}
    for rec in records:
        caps = rec["caption"] if isinstance(rec["caption"], list) else [rec["caption"]]
        for c in caps:
            try:
                order.setdefault(rec["filename"], []).append(check_caption(c, f"{where}:{rec['_line']}"))
            except BadSample as e:
                skipped[e.reason] = skipped.get(e.reason, 0) + 1
    names = [n for n, caps in order.items() if caps]
    return names, [order[n] for n in names], skipped


def retrieve(clip, images: EvalImages, captions: list[list[str]], device, batch_size=128, num_workers=0,
             context_length=77, what="retrieval") -> dict[str, float]:
    """Recall@k of ``images`` (item i described by ``captions[i]``) plus readable/unreadable counts.
    Towers with FILIP's dense heads (``eval.similarity=token``) score token-wise: :func:`retrieve_tokenwise`."""
    if isinstance(clip, TokenTowers):
        return retrieve_tokenwise(clip, images, captions, device, batch_size, num_workers, context_length, what)
    feats = image_features(clip, images, device, batch_size, num_workers, what)
    kept = feats.index.tolist()
    texts = [c for i in kept for c in captions[i]]
    text_image = torch.tensor([j for j, i in enumerate(kept) for _ in captions[i]], dtype=torch.long)
    tfeats = text_features(clip, texts, device, 256, context_length)
    res = retrieval_metrics(feats.feats, tfeats, text_image)
    return {**res, "texts": len(texts), **counts(feats, 0)}


def retrieve_tokenwise(towers, images: EvalImages, captions: list[list[str]], device, batch_size=128,
                       num_workers=0, context_length=77, what="retrieval") -> dict[str, float]:
    """:func:`retrieve` with i2t / t2i token-wise scores. Every caption is encoded first (the images stream
    past them, so only score rows are kept); the captions of unreadable images are then dropped."""
    texts = [c for caps in captions for c in caps]
    owner = torch.tensor([i for i, caps in enumerate(captions) for _ in caps], dtype=torch.long)
    encode = retrieval_scorer(towers, texts, device, context_length)
    feats = image_features(towers, images, device, batch_size, num_workers, what, encode=encode)
    keep = torch.isin(owner, feats.index)
    i2t, t2i = feats.feats[:, :len(texts)][:, keep], feats.feats[:, len(texts):][:, keep]
    row = torch.full((len(captions),), -1, dtype=torch.long)
    row[feats.index] = torch.arange(feats.index.numel())
    res = recall_at_k(t2i.T, row[owner[keep]], sim_i2t=i2t)
    return {**res, "texts": int(keep.sum()), **counts(feats, 0)}


def retrieval_manifest(clip, cfg: Config, device) -> dict[str, float]:
    """Retrieval on ``eval.retrieval_manifest`` / ``eval.retrieval_root``."""
    ev = cfg.eval
    man = read_manifest(ev.retrieval_manifest, _check_record)
    root = check_root(ev.retrieval_root, str(man.path))
    names, captions, skipped = group_captions(man.records, str(man.path))
    if ev.max_images:
        names, captions = names[: ev.max_images], captions[: ev.max_images]
    if not names:
        raise EvalDataError(f"{man.path}: no image with a usable caption ({len(man.bad)} bad lines, "
                            f"skipped captions {skipped})")
    images = file_images(root, names, cfg, str(man.path))
    res = retrieve(clip, images, captions, device, ev.batch_size, ev.num_workers,
                   cfg.model.text.context_length, str(man.path))
    res.update(bad_lines=len(man.bad), skipped_captions=sum(skipped.values()))
    return res


def retrieval_builtin(clip, cfg: Config, device) -> dict[str, float]:
    """The built-in held-out captions: 200 scenes x 2 captions of the training generator's kind."""
    from .builtin_sets import RETRIEVAL_SIZE, RetrievalImages, retrieval_item

    ev = cfg.eval
    n = min(RETRIEVAL_SIZE, ev.max_images) if ev.max_images else RETRIEVAL_SIZE
    captions = [retrieval_item(i)[1] for i in range(n)]
    images = EvalImages(RetrievalImages(), n, eval_transform_uint8(cfg.model.vision.image_size))
    return retrieve(clip, images, captions, device, ev.batch_size, ev.num_workers,
                    cfg.model.text.context_length, "built-in retrieval")
