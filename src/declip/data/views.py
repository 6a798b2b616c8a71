"""Image pipelines, split in two stages.

Training (issue 9): the data-loader workers do only what needs the source pixels — decode (elsewhere), the random
resized crops and the horizontal flip — and return the views as uint8 ``[n_views, 3, H, W]``, together with every
random parameter of the per-pixel augmentations, drawn here from the sample's own seed (see
:mod:`declip.data.loader`). Colour jitter, grayscale, blur, float conversion and normalisation then run batched
on the training device (:mod:`declip.data.device_augment`). Because the parameters are drawn on the CPU from the
per-sample seed, a batch is the same whatever the worker count, and a resumed run sees the same augmentations.

Evaluation: :func:`eval_transform_uint8` (resize + centre crop as :func:`eval_preprocess_cfg` says, the
config ``declip export`` writes; uint8, CPU) and
:func:`declip.data.device_augment.normalize_on_device` split the same way.

The reference, all-on-the-CPU pipelines (:func:`mocov2_transform`, :func:`clip_transform`,
:func:`eval_transform`, :class:`MultiView`) stay: the equivalence tests and ``benchmarks/loader_throughput.py``
compare the split pipeline against them.

Pixel-valued strengths scale with the image size (issue 15): MoCo v2 tuned its blur for 224 px views
(sigma ~ U(0.1, 2.0) px, 23 px kernel), so at ``size`` px both are multiplied by ``size / 224``
(:func:`blur_sigma_range`, :func:`blur_kernel_size`); 224 px keeps the reference values exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REFERENCE_SIZE = 224  # the resolution MoCo v2's pixel-valued settings were tuned at
RESIZE_MODES = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


def blur_sigma_range(size: int, sigma: tuple[float, float] = (0.1, 2.0)) -> tuple[float, float]:
    """MoCo v2's blur sigma range in pixels, scaled from 224 px to ``size`` px (unchanged at 224)."""
    s = size / REFERENCE_SIZE
    return sigma[0] * s, sigma[1] * s


def blur_kernel_size(size: int) -> int:
    """Odd kernel side of ~10% of the image side: MoCo v2's 23 px at 224 px, 3 px at most at 32 px."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def _to_tensor():
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


# --------------------------------------------------------------------------- reference CPU pipelines (old path)
class GaussianBlurPIL(torch.nn.Module):
    """MoCo v2's blur as the reference implements it: PIL's GaussianBlur with sigma ~ U(sigma).

    The reference CPU pipeline only (the training pipeline blurs on the device). PIL takes no kernel size (its
    blur is an extended box filter of the given radius); ``kernel`` is used for tensor inputs only.
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
    """The old, all-on-the-CPU DeCLIP view (kept as the reference): RRC(scale 0.2-1), colour jitter p=0.8,
    grayscale p=0.2, blur p=0.5 (sigma scaled to ``size``, see :func:`blur_sigma_range`), flip, normalise."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([GaussianBlurPIL(blur_sigma_range(size), blur_kernel_size(size))], p=0.5),
        v2.RandomHorizontalFlip(),
        *_to_tensor(),
    ])


def clip_transform(size: int) -> v2.Compose:
    """The old CPU CLIP view (reference): RandomResizedCrop(scale 0.5-1), normalise."""
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), *_to_tensor()])


# The eval transform as open_clip describes one (its PreprocessCfg fields). ``declip export`` writes this dict
# into open_clip_config.json and evaluation builds its transform from it, so open_clip's
# ``create_model_and_transforms('local-dir:EXPORT')`` and CLIP_benchmark preprocess exactly as ``declip eval``:
# resize the shortest side to the input size (bilinear, antialiased), centre crop, ImageNet mean/std. open_clip
# has no crop margin, so there is none here either (the DeCLIP reference resized to 256/224 of the crop first).
EVAL_RESIZE_MODE = "shortest"
EVAL_INTERPOLATION = "bilinear"


def eval_preprocess_cfg(size: int) -> dict:
    """open_clip's ``PreprocessCfg`` fields of declip's eval transform at input side ``size``."""
    return {"size": size, "mode": "RGB", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "interpolation": EVAL_INTERPOLATION, "resize_mode": EVAL_RESIZE_MODE, "fill_color": 0}


def eval_geometry(preprocess: dict) -> list:
    """The resize + centre crop that ``preprocess`` (open_clip PreprocessCfg fields) describes, as v2 transforms.
    Only the 'shortest' resize mode (what declip writes); another is refused rather than silently replaced."""
    mode, interpolation = preprocess.get("resize_mode", "shortest"), preprocess.get("interpolation", "bicubic")
    if mode != EVAL_RESIZE_MODE or interpolation not in RESIZE_MODES:
        raise ValueError(f"preprocess resize_mode={mode!r}, interpolation={interpolation!r}: declip evaluates with "
                         f"resize_mode 'shortest' and interpolation {' or '.join(RESIZE_MODES)}")
    size = preprocess["size"]
    size = size if isinstance(size, int) else int(size[0])
    return [v2.Resize(size, interpolation=RESIZE_MODES[interpolation], antialias=True), v2.CenterCrop(size)]


def eval_transform(size: int) -> v2.Compose:
    """The eval transform (:func:`eval_preprocess_cfg`: shortest side to ``size``, centre crop), normalised on the
    CPU (float): what open_clip's transform for an export computes."""
    return v2.Compose([*eval_geometry(eval_preprocess_cfg(size)), *_to_tensor()])


def eval_transform_uint8(size: int) -> v2.Compose:
    """The CPU half of evaluation (:func:`eval_preprocess_cfg`'s resize + centre crop) as uint8 [3, H, W].
    Normalise the batch on the device with :func:`declip.data.device_augment.normalize_on_device`."""
    return v2.Compose([*eval_geometry(eval_preprocess_cfg(size)), v2.ToImage(), v2.ToPureTensor()])


class MultiView:
    """Apply ``transform`` ``n`` times to the same image; returns a [n, C, H, W] tensor (reference path)."""

    def __init__(self, transform, n: int):
        self.transform, self.n = transform, n

    def __call__(self, image) -> torch.Tensor:
        return torch.stack([self.transform(image) for _ in range(self.n)])


def build_reference_views(augment: str, size: int, n_views: int) -> MultiView:
    """The old CPU pipeline (float, normalised views): for the benchmark's side-by-side and the tests."""
    base = {"mocov2": mocov2_transform, "clip": clip_transform}[augment](size)
    return MultiView(base, n_views)


# ------------------------------------------------------------------------------- split pipeline: CPU stage
# Columns of the per-view parameter vector ("aug_params"), drawn on the CPU, applied on the device.
P_FLIP = 0  # 1: the view was flipped (already applied on the CPU; recorded for inspection and tests)
P_JITTER = 1  # 1: colour jitter applies
P_BRIGHTNESS, P_CONTRAST, P_SATURATION, P_HUE = 2, 3, 4, 5  # jitter factors (hue: shift in turns)
P_ORDER = slice(6, 10)  # the jitter ops' order: a permutation of 0..3 = brightness, contrast, saturation, hue
P_GRAY = 10  # 1: grayscale
P_BLUR = 11  # 1: Gaussian blur
P_SIGMA = 12  # the blur's sigma in pixels (already scaled to the image size)
N_PARAMS = 13


@dataclass(frozen=True)
class ViewAugment:
    """The per-pixel augmentation recipe. Defaults: MoCo v2 / DeCLIP at 224 px. Pixel-valued settings (``sigma``)
    are given for 224 px; :meth:`for_size` scales them (see the module docstring)."""

    p_jitter: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    p_gray: float = 0.2
    p_blur: float = 0.5
    sigma: tuple[float, float] = (0.1, 2.0)
    p_flip: float = 0.5

    def for_size(self, size: int) -> ViewAugment:
        return replace(self, sigma=blur_sigma_range(size, self.sigma))

    def draw(self) -> torch.Tensor:
        """One view's parameters [N_PARAMS] from torch's global generator: always the same 13 draws, so the
        stream position never depends on the outcomes."""
        u = torch.rand(N_PARAMS, dtype=torch.float64).tolist()
        p = [0.0] * N_PARAMS
        p[P_FLIP] = float(u[0] < self.p_flip)
        p[P_JITTER] = float(u[1] < self.p_jitter)
        for col, strength in ((P_BRIGHTNESS, self.brightness), (P_CONTRAST, self.contrast),
                              (P_SATURATION, self.saturation)):
            lo = max(0.0, 1.0 - strength)  # torchvision's range: [max(0, 1 - s), 1 + s]
            p[col] = lo + (1.0 + strength - lo) * u[col]
        p[P_HUE] = self.hue * (2.0 * u[P_HUE] - 1.0)
        p[P_ORDER] = [float(i) for i in sorted(range(4), key=lambda i: u[6 + i])]  # a uniform random permutation
        p[P_GRAY] = float(u[10] < self.p_gray)
        p[P_BLUR] = float(u[11] < self.p_blur)
        p[P_SIGMA] = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * u[12]
        return torch.tensor(p, dtype=torch.float32)

    def draw_none(self) -> torch.Tensor:
        """Parameters that leave a view as cropped (no flip, jitter, grayscale or blur): SLIP's base view, in a
        batch whose other views are augmented. The same 13 draws are consumed, so the stream is as for draw()."""
        torch.rand(N_PARAMS, dtype=torch.float64)
        p = torch.zeros(N_PARAMS, dtype=torch.float32)
        p[P_ORDER] = torch.arange(4, dtype=torch.float32)
        p[P_SIGMA] = self.sigma[0]
        return p


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 [3, H, W] (a channels-last view of one copy of the pixels)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)


class CropViews:
    """The loader-worker stage: ``n`` random resized crops of one decoded PIL image, resized to ``size``,
    flipped with ``augment.p_flip``, as uint8 ``images`` [n, 3, size, size]; with ``augment`` also the
    device stage's parameters ``aug_params`` [n, N_PARAMS]. All randomness comes from torch's global
    generator, which the loader seeds per sample; the crop is drawn first, by the same transform class as
    the reference pipeline, so under one seed both crop identically. ``second_scale``: the crop area range of
    every view after the first (``None``: ``scale``); the draws per view are the same whatever the ranges.
    ``plain_first``: the first view is only cropped (SLIP's CLIP view), the later ones get ``augment``.
    ``interpolation``: the crops' resize, ``bilinear`` (the reference's) or ``bicubic`` (open_clip's training
    crop; torch's antialiased uint8 bicubic is PIL's bicubic to within 1/255). On 32 px images the choice shows
    in the score, either way round (benchmarks/results/learning.md, round 8: icons vs emoji)."""

    def __init__(self, size: int, n: int, scale: tuple[float, float], augment: ViewAugment | None = None,
                 second_scale: tuple[float, float] | None = None, interpolation: str = "bilinear",
                 plain_first: bool = False):
        if interpolation not in RESIZE_MODES:
            raise ValueError(f"unknown crop interpolation {interpolation!r} ({' | '.join(RESIZE_MODES)})")
        self.size, self.interpolation = size, RESIZE_MODES[interpolation]
        self.crop = v2.RandomResizedCrop(size, scale=scale, antialias=True)
        later = v2.RandomResizedCrop(size, scale=second_scale, antialias=True) if second_scale else self.crop
        self.crops = [self.crop] + [later] * (n - 1)
        self.augment = augment.for_size(size) if augment is not None else None
        self.plain_first = plain_first

    def __call__(self, image: Image.Image) -> dict:
        pixels = pil_to_uint8(image)  # once per image; crops are slices of it
        views, params = [], []
        for v, resized_crop in enumerate(self.crops):
            box = resized_crop.make_params([image])  # top, left, height, width: the reference's draws
            top, left = box["top"], box["left"]
            crop = pixels[None, :, top:top + box["height"], left:left + box["width"]]
            # torch's uint8 antialiased resize (bilinear: the reference's PIL resize to within 1/255, ~3x faster)
            view = F.resize(crop, [self.size, self.size], interpolation=self.interpolation, antialias=True)[0]
            if self.augment is not None:
                p = self.augment.draw_none() if (v == 0 and self.plain_first) else self.augment.draw()
                if p[P_FLIP] > 0:
                    view = view.flip(-1)
                params.append(p)
            views.append(view)
        out = {"images": torch.stack(views)}
        if self.augment is not None:
            out["aug_params"] = torch.stack(params)
        return out


# slip: the first view's (CLIP's); its later views take MoCo v2's (SLIP_SSL_CROP_SCALE)
REFERENCE_CROP_SCALE = {"mocov2": (0.2, 1.0), "clip": (0.5, 1.0), "slip": (0.5, 1.0)}
SLIP_SSL_CROP_SCALE = REFERENCE_CROP_SCALE["mocov2"]
AUGMENTS = tuple(REFERENCE_CROP_SCALE)  # the DataSpec.augment names



def build_train_views(augment: str, size: int, n_views: int, crop_scale: tuple[float, float] | None = None,
                      second_view_crop_scale: tuple[float, float] | None = None,
                      crop_interpolation: str = "bilinear") -> CropViews:
    """The CPU stage for a method's ``DataSpec.augment``: ``mocov2`` = RRC(0.2-1) + flip + MoCo v2 colour/blur
    parameters; ``clip`` = RRC(0.5-1) only (the device stage just normalises). ``crop_scale`` replaces the
    reference's crop area range (``data.crop_scale``), ``second_view_crop_scale`` the later views' range,
    ``crop_interpolation`` the crops' resize (``data.crop_interpolation``). ``slip``: view 1 as ``clip``, the
    later views as ``mocov2`` (RRC 0.2-1 + flip + colour/blur), for SLIP's CLIP view + two SimCLR views."""
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r} ({' | '.join(AUGMENTS)})")
    if augment == "slip":
        second_view_crop_scale = second_view_crop_scale or SLIP_SSL_CROP_SCALE
    return CropViews(size, n_views, crop_scale or REFERENCE_CROP_SCALE[augment],
                     ViewAugment() if augment != "clip" else None, second_view_crop_scale, crop_interpolation,
                     plain_first=augment == "slip")
