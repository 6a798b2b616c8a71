"""The device half of the image pipeline: per-pixel augmentation and normalisation, batched on the training device.

The loader's workers hand over uint8 views ``images`` [B, V, 3, H, W] and, for MoCo v2 views, every random
parameter of the augmentations (``aug_params`` [B, V, 13], columns in :mod:`declip.data.views`), drawn on the CPU
from the per-sample seed. :class:`DeviceStage` applies them — colour jitter (brightness, contrast, saturation, hue
in the view's own random order), grayscale, Gaussian blur — converts to float32 and normalises with the ImageNet
mean/std, giving the same ``images`` float tensor the methods have always read. It draws nothing itself, so a
batch depends only on the sample seeds: the same with any worker count, on any device, and after a resume.

On the CPU (tests, laptops) it runs on the CPU: one code path. Batches whose ``images`` are already float (the
synthetic batches of benchmarks and tests) pass through unchanged.

Why not a library: torchvision's functionals take one factor per call (per-view factors would mean a Python loop
of ~1,000 small kernels per batch), and the per-view random order of the four jitter ops is what torchvision's
ColorJitter does per image. The ops below follow torchvision's tensor semantics (``tests/test_device_augment.py``
checks each against ``torchvision.transforms.v2.functional`` with the same factor):

- brightness: ``clamp(f * x)``; contrast: ``clamp(f * x + (1 - f) * mean(gray(x)))``;
  saturation: ``clamp(f * x + (1 - f) * gray(x))``; hue: rotate H in HSV by the shift (in turns);
- grayscale: ITU-R 601 luma in all three channels; blur: separable Gaussian, reflect padding, kernel side from
  :func:`declip.data.views.blur_kernel_size`, sigma per view (a depthwise convolution: cuDNN may run it in TF32
  on recent GPUs, ~5e-4 relative, far below the 1/255 of an 8-bit input).

Cost: brightness/contrast/saturation run as one blend over the whole batch per position of the random order (a
view whose op at that position is another one blends with factor 1, which is exact); hue and blur run only on the
views that use them, gathered by an index the collate function builds on the CPU (``aug_index`` + ``aug_counts``),
so nothing here waits on the device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as nnf

from .views import (AUGMENTS, IMAGENET_MEAN, IMAGENET_STD, P_BLUR, P_BRIGHTNESS, P_CONTRAST, P_GRAY, P_HUE,
                    P_JITTER, P_ORDER, P_SATURATION, P_SIGMA, blur_kernel_size)

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
HUE_OP = 3  # position of hue in the order permutation's alphabet: 0 brightness, 1 contrast, 2 saturation, 3 hue
AUG_KEYS = ("aug_params", "aug_index", "aug_counts")


# ------------------------------------------------------------------------------------------ the plan (CPU)
def augment_plan(params: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Which views need the subset ops, from the views' parameters [N, 13] (any leading shape, flattened):
    the views whose hue shift comes 1st, 2nd, 3rd, 4th in their jitter order, then the blurred views. Returns the
    concatenated view indices (int64) and the five group sizes. Built on the CPU by the collate function, so the
    device stage can gather without a device->host sync."""
    p = params.reshape(-1, params.shape[-1]).cpu()
    jitter = p[:, P_JITTER] > 0.5
    order = p[:, P_ORDER]
    groups = [torch.nonzero(jitter & (order[:, k] == HUE_OP)).flatten() for k in range(4)]
    groups.append(torch.nonzero(p[:, P_BLUR] > 0.5).flatten())
    return torch.cat(groups), [len(g) for g in groups]


# ------------------------------------------------------------------------------------------------ the ops
def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of float RGB images x [N, 3, H, W] in [0, 1] by ``shift`` [N] turns (RGB -> HSV -> RGB)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    sat = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    d = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, (g - b) / d, torch.where(maxc == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    hue = torch.remainder(hue / 6.0 + shift.view(-1, 1, 1), 1.0) * 6.0  # in sextants, [0, 6)
    # HSV -> RGB without branches: channel c = V - V*S*clamp(min(k, 4 - k), 0, 1), k = (n_c + H) mod 6
    n = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # 5, 3, 1 (no host copy)
    k = torch.remainder(n + hue.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    v = maxc.unsqueeze(1)
    return v - v * sat.unsqueeze(1) * ramp


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur of x [N, C, H, W] with one sigma per image [N] (pixels), reflect padding,
    a ``kernel``-tap kernel (odd) normalised to sum 1, as torchvision's gaussian_blur."""
    n, c, h, w = x.shape
    half = kernel // 2
    t = torch.linspace(-half, half, kernel, device=x.device, dtype=x.dtype)
    taps = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1)) ** 2)
    taps = (taps / taps.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [N*C, K]
    y = nnf.pad(x.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    y = nnf.conv2d(y, taps.view(n * c, 1, 1, kernel), groups=n * c)
    y = nnf.conv2d(y, taps.view(n * c, 1, kernel, 1), groups=n * c)
    return y.view(n, c, h, w)


def _subset(x: torch.Tensor, index: torch.Tensor, fn) -> None:
    if index.numel():
        x.index_copy_(0, index, fn(x.index_select(0, index), index))


def apply_view_augment(x: torch.Tensor, params: torch.Tensor, kernel: int, index: torch.Tensor | None = None,
                       counts: list[int] | None = None) -> torch.Tensor:
    """MoCo v2's per-pixel augmentations of float views x [N, 3, H, W] in [0, 1] with their parameters [N, 13]
    (on x's device). ``index``/``counts``: :func:`augment_plan` of the parameters (computed here if absent,
    which costs a device->host copy). Works in place on x; returns it."""
    if index is None or counts is None:
        index, counts = augment_plan(params)
    index = index.to(x.device, non_blocking=True)
    groups = torch.split(index, counts)
    p = params.to(x.dtype)
    jitter = p[:, P_JITTER] > 0.5
    order = p[:, P_ORDER]
    one = torch.ones_like(p[:, 0])
    for k in range(4):  # brightness, contrast and saturation as one blend per position; hue on its views
        op = torch.where(jitter, order[:, k], torch.full_like(one, -1.0))
        is_b, is_c, is_s = op == 0, op == 1, op == 2
        f = torch.where(is_b, p[:, P_BRIGHTNESS], torch.where(is_c, p[:, P_CONTRAST],
                                                               torch.where(is_s, p[:, P_SATURATION], one)))
        gray = _gray(x)
        ref = is_c.to(x.dtype).view(-1, 1, 1, 1) * gray.mean((1, 2, 3), keepdim=True) \
            + is_s.to(x.dtype).view(-1, 1, 1, 1) * gray
        x = torch.lerp(ref, x, f.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)  # f * x + (1 - f) * ref; x itself at f=1
        _subset(x, groups[k], lambda xs, i: adjust_hue(xs, p[i, P_HUE]).clamp_(0.0, 1.0))
    gray_flag = (p[:, P_GRAY] > 0.5).view(-1, 1, 1, 1)
    x = torch.where(gray_flag, _gray(x).expand_as(x), x)
    _subset(x, groups[4], lambda xs, i: gaussian_blur(xs, p[i, P_SIGMA], kernel))
    return x


# ------------------------------------------------------------------------------------------ the stage
_NORM_CACHE: dict = {}


def _mean_std(device: torch.device, dtype: torch.dtype):
    key = (str(device), dtype)
    if key not in _NORM_CACHE:
        _NORM_CACHE[key] = (torch.tensor(IMAGENET_MEAN, device=device, dtype=dtype).view(1, 3, 1, 1),
                            torch.tensor(IMAGENET_STD, device=device, dtype=dtype).view(1, 3, 1, 1))
    return _NORM_CACHE[key]


def _normalize_(x: torch.Tensor) -> torch.Tensor:
    mean, std = _mean_std(x.device, x.dtype)
    return x.sub_(mean).div_(std)


def normalize_on_device(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 images [..., 3, H, W] (from :func:`declip.data.views.eval_transform_uint8`) -> float32 normalised
    with the ImageNet mean/std, on ``device`` (default: where they are). The device half of evaluation."""
    if device is not None:
        images = images.to(device, non_blocking=True)
    shape = images.shape
    x = images.reshape(-1, *shape[-3:]).to(torch.float32).div_(255.0)
    return _normalize_(x).view(shape)


class DeviceStage:
    """``batch -> batch``: uint8 ``images`` [B, V, 3, H, W] -> augmented (if ``augment``), float32, normalised,
    same shape; consumes the ``aug_*`` keys, so the methods see exactly the batch they always did."""

    def __init__(self, augment: bool, image_size: int):
        self.augment, self.kernel = augment, blur_kernel_size(image_size)

    def __call__(self, batch: dict) -> dict:
        batch = dict(batch)
        params, index, counts = (batch.pop(k, None) for k in AUG_KEYS)
        images = batch.get("images")
        if images is None or images.dtype != torch.uint8:  # already float: a synthetic batch
            return batch
        shape = images.shape
        x = images.reshape(-1, *shape[-3:]).to(torch.float32).div_(255.0)
        if self.augment and params is not None:
            x = apply_view_augment(x, params.reshape(x.shape[0], -1).to(x.device), self.kernel, index, counts)
        batch["images"] = _normalize_(x).view(shape)
        return batch

    def __repr__(self) -> str:
        return f"DeviceStage(augment={self.augment}, blur_kernel={self.kernel})"


def build_device_stage(spec, image_size: int) -> DeviceStage:
    """The device stage for a method's :class:`~declip.data.loader.DataSpec`: MoCo v2 augmentation + normalise
    for ``augment='mocov2'`` and ``'slip'`` (whose first view's parameters are no-ops), normalise only for
    ``'clip'``."""
    if spec.augment not in AUGMENTS:
        raise ValueError(f"unknown augment {spec.augment!r} ({' | '.join(AUGMENTS)})")
    return DeviceStage(spec.augment != "clip", image_size)
