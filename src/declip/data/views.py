"""Image pipelines. A multi-view transform returns a list of independent draws from one decoded image
(decode once, augment twice: the decode is the expensive part)."""
from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_tensor():
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def mocov2_transform(size: int) -> v2.Compose:
    """DeCLIP's view: RRC(scale 0.2-1), colour jitter p=0.8, grayscale p=0.2, blur p=0.5, flip."""
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # odd, ~10% of the side (MoCo v2's 23 px at 224)
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
        v2.RandomHorizontalFlip(),
        *_to_tensor(),
    ])


def clip_transform(size: int) -> v2.Compose:
    """The CLIP baseline's only augmentation: RandomResizedCrop(scale 0.5-1)."""
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), *_to_tensor()])


def eval_transform(size: int) -> v2.Compose:
    """Resize(256) + CenterCrop(224), scaled to ``size``."""
    return v2.Compose([v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size), *_to_tensor()])


class MultiView:
    """Apply ``transform`` ``n`` times to the same image; returns a [n, C, H, W] tensor."""

    def __init__(self, transform, n: int):
        self.transform, self.n = transform, n

    def __call__(self, image) -> torch.Tensor:
        return torch.stack([self.transform(image) for _ in range(self.n)])


def build_train_views(augment: str, size: int, n_views: int) -> MultiView:
    base = {"mocov2": mocov2_transform, "clip": clip_transform}[augment](size)
    return MultiView(base, n_views)
