"""Image pipelines. A multi-view transform returns a list of independent draws from one decoded image
(decode once, augment twice: the decode is the expensive part)."""
from __future__ import annotations

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_tensor():
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


class GaussianBlurPIL(torch.nn.Module):
    """MoCo v2's blur as the reference implements it: PIL's GaussianBlur with sigma ~ U(0.1, 2.0).

    On a 224 px PIL image this is ~25x cheaper than torchvision's 23-tap float convolution (1.2 vs 28 ms on a
    Xeon core), which alone was most of the two-view pipeline's CPU time (benchmarks/loader_throughput.py).
    The sigma is drawn from torch's generator, so the loader's per-sample seeding still fixes it.
    """

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0), kernel: int = 23):
        super().__init__()
        self.sigma, self.kernel = sigma, kernel

    def forward(self, img):
        sigma = float(torch.empty(1).uniform_(*self.sigma))
        if isinstance(img, Image.Image):
            return img.filter(ImageFilter.GaussianBlur(radius=sigma))
        return F.gaussian_blur(img, [self.kernel, self.kernel], [sigma, sigma])  # tensor input


def mocov2_transform(size: int) -> v2.Compose:
    """DeCLIP's view: RRC(scale 0.2-1), colour jitter p=0.8, grayscale p=0.2, blur p=0.5, flip."""
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # odd, ~10% of the side (MoCo v2's 23 px at 224)
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([GaussianBlurPIL((0.1, 2.0), kernel)], p=0.5),
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
