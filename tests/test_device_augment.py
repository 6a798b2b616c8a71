"""The split image pipeline (issue 9): uint8 crops + parameters from the loader workers, per-pixel augmentation and
normalisation batched on the device. It must have the reference distribution, match the reference ops, reduce
to the old crop + normalise when nothing is applied, and be deterministic per sample (any worker count)."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from declip.data.device_augment import (DeviceStage, apply_view_augment, augment_plan, build_device_stage,
                                        normalize_on_device)
from declip.data.loader import DataSpec, DevicePrefetcher, PairDataset, build_train_loader, collate
from declip.data.views import (IMAGENET_MEAN, IMAGENET_STD, N_PARAMS, P_BLUR, P_BRIGHTNESS, P_CONTRAST, P_FLIP,
                               P_GRAY, P_HUE, P_JITTER, P_ORDER, P_SATURATION, P_SIGMA, CropViews, ViewAugment,
                               blur_kernel_size, blur_sigma_range, clip_transform, eval_transform,
                               eval_transform_uint8)

STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)


def photo(w=500, h=375, seed=0) -> Image.Image:
    """A smooth colour field with grain: photo-like, asymmetric, every channel different."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(base).astype(np.int16) + rng.integers(-10, 11, (h, w, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


class FixedSource:
    """One fixed image under every index (the loader's per-sample seeds make the views differ)."""

    def __init__(self, n, image):
        self.n, self.image = n, image

    def __len__(self):
        return self.n

    def load(self, i):
        return self.image, "a photo of a fixed scene"


def reference_view(x: torch.Tensor, p: torch.Tensor, kernel: int) -> torch.Tensor:
    """One view, op by op with torchvision's functionals, in the view's own jitter order."""
    ops = [lambda y: F.adjust_brightness(y, float(p[P_BRIGHTNESS])),
           lambda y: F.adjust_contrast(y, float(p[P_CONTRAST])),
           lambda y: F.adjust_saturation(y, float(p[P_SATURATION])),
           lambda y: F.adjust_hue(y, float(p[P_HUE]))]
    if p[P_JITTER] > 0:
        for k in p[P_ORDER].long().tolist():
            x = ops[k](x)
    if p[P_GRAY] > 0:
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    if p[P_BLUR] > 0:
        s = float(p[P_SIGMA])
        x = F.gaussian_blur(x, [kernel, kernel], [s, s])
    return x


# ------------------------------------------------------------------------------------- the ops themselves
def test_batched_ops_match_torchvision_per_view():
    torch.manual_seed(0)
    n, size = 48, 40
    aug = ViewAugment(p_jitter=0.9, p_gray=0.3, p_blur=0.6).for_size(224)  # reference sigma range
    params = torch.stack([aug.draw() for _ in range(n)])
    x = F.pil_to_tensor(photo(size, size)).float().div(255).expand(n, -1, -1, -1).clone()
    x += 0.05 * torch.randn_like(x)  # different pixels per view
    x.clamp_(0, 1)
    kernel = blur_kernel_size(224)
    got = apply_view_augment(x.clone(), params, kernel)
    want = torch.stack([reference_view(x[i], params[i], kernel) for i in range(n)])
    assert (got - want).abs().max() < 1e-4
    # the index plan the collate function builds gives the same result as the fallback
    index, counts = augment_plan(params)
    assert torch.equal(apply_view_augment(x.clone(), params, kernel, index, counts), got)
    gray = params[:, P_GRAY] > 0
    assert gray.any() and torch.allclose(got[gray][:, 0], got[gray][:, 1], atol=1e-6)


def test_identity_parameters_leave_views_unchanged():
    x = torch.rand(5, 3, 16, 16)
    p = torch.zeros(5, N_PARAMS)
    p[:, P_JITTER] = 1  # jitter "applied" with identity factors in every order
    p[:, [P_BRIGHTNESS, P_CONTRAST, P_SATURATION]] = 1.0
    p[:, P_ORDER] = torch.stack([torch.randperm(4) for _ in range(5)]).float()
    assert (apply_view_augment(x.clone(), p, 3) - x).abs().max() < 1e-5


# --------------------------------------------------------------------------------- the reference distribution
@pytest.fixture(scope="module")
def many_views():
    """4,000 MoCo v2 views of one 500x375 image at 64 px (the cheap size; rates do not depend on it):
    2,000 per-sample seeds x 2 views, through the loader's dataset (per-sample seeding, as in training)."""
    ds = PairDataset(FixedSource(2000, photo()), DataSpec(n_views=2, augment="mocov2"), 64, seed=11)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker (intra-op threads only contend on a busy CI machine)
    try:
        samples = [ds[(0, i)] for i in range(2000)]
    finally:
        torch.set_num_threads(threads)
    return torch.cat([s["aug_params"] for s in samples]), samples


def test_augmentation_rates_and_ranges(many_views):
    params, samples = many_views
    assert params.shape == (4000, N_PARAMS)
    rate = params.mean(0)
    assert abs(rate[P_GRAY] - 0.2) <= 0.02
    assert abs(rate[P_BLUR] - 0.5) <= 0.03
    assert abs(rate[P_JITTER] - 0.8) <= 0.03
    assert abs(rate[P_FLIP] - 0.5) <= 0.03
    for col in (P_BRIGHTNESS, P_CONTRAST, P_SATURATION):
        assert 0.6 <= params[:, col].min() and params[:, col].max() <= 1.4
        assert params[:, col].max() - params[:, col].min() > 0.75  # spans the range
    assert -0.1 <= params[:, P_HUE].min() and params[:, P_HUE].max() <= 0.1
    lo, hi = blur_sigma_range(64)  # the 224 px range [0.1, 2.0] scaled to 64 px (issue 15)
    assert lo <= params[:, P_SIGMA].min() and params[:, P_SIGMA].max() <= hi
    torch.manual_seed(0)
    at_224 = torch.stack([ViewAugment().for_size(224).draw() for _ in range(4000)])[:, P_SIGMA]
    assert 0.1 <= at_224.min() < 0.11 and 1.99 < at_224.max() <= 2.0  # the reference range at 224 px
    orders = params[:, P_ORDER].long()
    assert (orders.sort(1).values == torch.arange(4)).all()  # each a permutation of the four ops
    counts = torch.bincount(orders @ torch.tensor([64, 16, 4, 1]), minlength=256)
    assert (counts > 0).sum() == 24 and counts.max() < 2.0 * 4000 / 24  # all 24 orders, roughly uniform
    assert all(s["images"].dtype == torch.uint8 and s["images"].shape == (2, 3, 64, 64) for s in samples[:5])


def test_flip_is_applied_on_the_cpu():
    img = photo(120, 90)
    for seed in range(5):
        out = {}
        for p_flip in (0.0, 1.0):  # same draws either way: only the flip differs
            torch.manual_seed(seed)
            out[p_flip] = CropViews(64, 2, (0.2, 1.0), ViewAugment(p_flip=p_flip))(img)
        assert torch.equal(out[1.0]["images"], out[0.0]["images"].flip(-1))
        assert (out[1.0]["aug_params"][:, P_FLIP] == 1).all() and (out[0.0]["aug_params"][:, P_FLIP] == 0).all()


# ---------------------------------------------------------------------------- equivalence with the old pipeline
def old_pipeline_all_off(size):
    """The old CPU MoCo v2 view with every probability set to 0: crop + normalise."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.0), v2.RandomGrayscale(p=0.0),
        v2.RandomApply([v2.GaussianBlur(23, (0.1, 2.0))], p=0.0), v2.RandomHorizontalFlip(p=0.0),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


@pytest.mark.parametrize("size", [224, 64])
def test_all_probabilities_zero_equals_old_crop_and_normalise(size):
    img = photo()
    off = ViewAugment(p_jitter=0.0, p_gray=0.0, p_blur=0.0, p_flip=0.0)
    stage = DeviceStage(augment=True, image_size=size)
    for seed in range(8):
        torch.manual_seed(seed)
        old = old_pipeline_all_off(size)(img)
        torch.manual_seed(seed)  # the crop is the first draw in both pipelines
        views = CropViews(size, 1, (0.2, 1.0), off)(img)
        batch = collate([{**views, "skips": torch.zeros(1), "skip_examples": []}])
        new = stage(batch)["images"][0, 0]
        assert new.shape == old.shape == (3, size, size)
        assert ((new - old) * STD).abs().max() <= 1 / 255 + 1e-6


def test_clip_split_equals_old_clip_view():
    img = photo(300, 200, seed=3)
    stage = build_device_stage(DataSpec(augment="clip"), 96)
    for seed in range(4):
        torch.manual_seed(seed)
        old = clip_transform(96)(img)
        torch.manual_seed(seed)
        views = CropViews(96, 1, (0.5, 1.0))(img)
        assert set(views) == {"images"}  # the CLIP baseline has no per-pixel parameters
        new = stage({"images": views["images"][None]})["images"][0, 0]
        assert ((new - old) * STD).abs().max() <= 1 / 255 + 1e-6


def test_eval_split_equals_old_eval_transform():
    img = photo(200, 150, seed=5)
    old = eval_transform(64)(img)
    cpu = eval_transform_uint8(64)(img)
    assert cpu.dtype == torch.uint8 and cpu.shape == (3, 64, 64)
    new = normalize_on_device(cpu[None], "cpu")[0]
    assert ((new - old) * STD).abs().max() <= 1 / 255 + 1e-6


# ------------------------------------------------------------------------------------ issue 15: size scaling
def test_blur_strength_scales_with_image_size():
    assert blur_sigma_range(224) == (0.1, 2.0) and blur_kernel_size(224) == 23  # the reference is unchanged
    lo, hi = blur_sigma_range(32)
    assert math.isclose(lo, 0.1 * 32 / 224) and math.isclose(hi, 2.0 * 32 / 224)
    assert blur_kernel_size(32) == 3 and blur_kernel_size(64) == 7 and blur_kernel_size(448) == 45
    assert ViewAugment().for_size(112).sigma == pytest.approx((0.05, 1.0))
    torch.manual_seed(0)
    views = CropViews(32, 2, (0.2, 1.0), ViewAugment())
    sig = torch.cat([views(photo(64, 48))["aug_params"][:, P_SIGMA] for _ in range(200)])
    assert lo <= sig.min() and sig.max() <= hi and sig.max() > 0.9 * hi
    # the same relative blur: a 224 px view blurred at sigma s, shrunk to 32 px, is close to the shrunk view
    # blurred at s * 32/224 (and much closer than blurring the small view at the unscaled s)
    big = F.pil_to_tensor(photo(224, 224, seed=7)).float()[None] / 255
    small = F.resize(big, [32, 32], antialias=True)
    from declip.data.device_augment import gaussian_blur
    s = torch.tensor([2.0])
    target = F.resize(gaussian_blur(big, s, 23), [32, 32], antialias=True)
    scaled = gaussian_blur(small, s * 32 / 224, blur_kernel_size(32))
    unscaled = gaussian_blur(small, s, 9)
    assert (scaled - target).abs().mean() < 0.5 * (unscaled - target).abs().mean()


# ----------------------------------------------------------------------------------- the stage and the loader
def test_stage_consumes_its_keys_and_passes_float_batches():
    stage = DeviceStage(augment=True, image_size=32)
    fl = {"images": torch.randn(2, 2, 3, 32, 32), "text": torch.zeros(2, 4), "aug_params": torch.zeros(2, 2, 13)}
    out = stage(fl)
    assert out["images"] is fl["images"] and "aug_params" not in out and "aug_params" in fl  # input untouched
    u8 = {"images": torch.full((2, 1, 3, 8, 8), 255, dtype=torch.uint8)}
    got = build_device_stage(DataSpec(augment="clip"), 8)(u8)["images"]
    assert got.dtype == torch.float32 and torch.allclose(got[0, 0], ((1 - MEAN) / STD).expand(3, 8, 8))


def _builtin_dataset(augment="mocov2", n_views=2):
    from declip.config import load_config
    from declip.data.sources import build_source

    cfg = load_config(None, ["data.builtin_size=96"])
    return PairDataset(build_source(cfg.data, image_size=32), DataSpec(n_views=n_views, augment=augment), 32, seed=4)


def test_same_seed_same_batch_with_zero_and_two_workers():
    ds = _builtin_dataset()
    stage = build_device_stage(ds.spec, 32)
    batches = {}
    for workers in (0, 2):
        it = iter(build_train_loader(ds, 8, workers, 0, 1, seed=4))
        batches[workers] = [next(it) for _ in range(3)]
    for a, b in zip(batches[0], batches[2]):
        assert a["images"].dtype == torch.uint8 and a["images"].shape == (8, 2, 3, 32, 32)
        assert a["aug_counts"] == b["aug_counts"]
        assert a.keys() == b.keys() and {"images", "aug_params", "aug_index", "index", "text"} <= a.keys()
        for k in a:
            assert torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k], k
        fa, fb = stage(a), stage(b)
        assert torch.equal(fa["images"], fb["images"]) and fa["images"].dtype == torch.float32
        assert set(fa) == {"images", "text", "index", "skips", "skip_examples"}


def test_prefetcher_on_the_cpu_moves_in_order_and_keeps_skips_on_the_host():
    ds = _builtin_dataset(augment="clip", n_views=1)
    loader = build_train_loader(ds, 4, 0, 0, 1, seed=4)
    plain = [b for _, b in zip(range(3), loader)]
    fetched = [b for _, b in zip(range(3), DevicePrefetcher(iter(build_train_loader(ds, 4, 0, 0, 1, seed=4)), "cpu"))]
    for a, b in zip(plain, fetched):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["skips"], b["skips"])
    assert list(DevicePrefetcher(iter([]), "cpu")) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prefetcher_and_stage_on_cuda_match_the_cpu():
    ds = _builtin_dataset()
    stage = build_device_stage(ds.spec, 32)
    cpu = [stage(b) for _, b in zip(range(3), build_train_loader(ds, 8, 0, 0, 1, seed=4))]
    gpu = [stage(b) for _, b in zip(range(3), DevicePrefetcher(build_train_loader(ds, 8, 0, 0, 1, seed=4,
                                                                                  pin_memory=True), "cuda"))]
    for a, b in zip(cpu, gpu):
        assert b["images"].is_cuda and not b["skips"].is_cuda
        # within 1/255 per pixel: cuDNN may run the blur's convolution in TF32 (~5e-4 relative)
        assert ((a["images"] - b["images"].cpu()) * STD).abs().max() <= 1 / 255


@pytest.mark.parametrize("method,augment", [("declip", True), ("clip", False)])
def test_trainer_builds_the_stage_from_the_method_spec(tiny_cfg, method, augment):
    from declip.train.trainer import Trainer

    trainer = Trainer(tiny_cfg(f"method.name={method}", "train.device=cpu"))
    try:
        assert trainer.device_stage.augment is augment and trainer.device_stage.kernel == blur_kernel_size(32)
        batch = next(iter(trainer.loader))
        assert batch["images"].dtype == torch.uint8 and ("aug_params" in batch) is augment
    finally:
        trainer.close()


def test_gpu_step_check_loader_fed_smoke_on_cpu():
    """The loader-fed GPU check (scripts/gpu_check.sh) end to end with tiny settings: generated JPEGs ->
    workers -> prefetcher -> device stage -> DeCLIP steps."""
    from pathlib import Path

    from helpers import load_benchmark

    module = load_benchmark("gpu_step_check")
    result = module.main(["--device", "cpu", "--preset", "tiny-vit", "--batch-size", "2", "--steps", "1",
                          "--warmup", "0", "--image-size", "32", "--precision", "fp32", "--data", "manifest",
                          "--images", "6", "--num-workers", "0", "method.queue_size=64",
                          "method.simsiam_proj_dim=32", "method.simsiam_pred_dim=16", "model.text.context_length=16"])
    assert result["data"] == "manifest" and result["losses_finite"] and result["fps"] > 0
    assert not Path(result["manifest"]).exists()  # the generated JPEGs are removed


@pytest.mark.parametrize("method", ["clip", "declip"])
def test_data_crop_scale_replaces_the_reference_crop_range(tmp_path, method):
    from declip.train.trainer import Trainer
    from declip.data.views import REFERENCE_CROP_SCALE
    from helpers import tiny_config

    default = Trainer(tiny_config(f"method.name={method}", f"train.output_dir={tmp_path / 'a'}"))
    expected = REFERENCE_CROP_SCALE["clip" if method == "clip" else "mocov2"]
    assert tuple(default.loader.dataset.views.crop.scale) == expected
    default.close()
    custom = Trainer(tiny_config(f"method.name={method}", "data.crop_scale=[0.9, 1.0]",
                                 f"train.output_dir={tmp_path / 'b'}"))
    assert tuple(custom.loader.dataset.views.crop.scale) == (0.9, 1.0)
    custom.close()


def test_second_view_crop_scale_crops_only_the_second_view_and_keeps_the_first_views_draws():
    """A wider second-view range (DeCLIP's multi-view term sees a harder view) must leave the first view exactly
    as it was, so the CLIP-like view and the random stream stay comparable with the one-range recipe."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    one_range, two_ranges = CropViews(16, 2, (1.0, 1.0)), CropViews(16, 2, (1.0, 1.0), second_scale=(0.05, 0.06))
    torch.manual_seed(3)
    same = one_range(image)["images"]
    torch.manual_seed(3)
    mixed = two_ranges(image)["images"]
    assert torch.equal(mixed[0], same[0])  # the first view: the whole image either way
    assert torch.equal(same[0], same[1])  # area 1.0, full aspect draws clipped to the image: the same crop
    assert not torch.equal(mixed[1], same[1])  # the second view: a ~5% patch, blown up


def test_trainer_takes_the_second_view_crop_range_and_clip_refuses_it(tmp_path):
    from declip.config import ConfigError
    from declip.train.trainer import Trainer
    from helpers import tiny_config

    trainer = Trainer(tiny_config("method.name=declip", "data.crop_scale=[0.9, 1.0]",
                                  "data.second_view_crop_scale=[0.5, 1.0]", f"train.output_dir={tmp_path}"))
    views = trainer.loader.dataset.views
    assert [tuple(c.scale) for c in views.crops] == [(0.9, 1.0), (0.5, 1.0)]
    trainer.close()
    with pytest.raises(ConfigError, match="data.second_view_crop_scale: method.name=clip trains on one"):
        tiny_config("method.name=clip", "data.second_view_crop_scale=[0.5, 1.0]")
    with pytest.raises(ConfigError, match=r"data.second_view_crop_scale: \[\] or \[min, max\]"):
        tiny_config("method.name=declip", "data.second_view_crop_scale=[0.5]")


def test_crop_interpolation_bicubic_is_pils_bicubic_and_reaches_the_views(tmp_path):
    """``data.crop_interpolation=bicubic`` resizes each crop as open_clip's training crop does (PIL bicubic, to
    within one level of 255); the default stays the reference's bilinear, which differs from it."""
    from declip.train.trainer import Trainer
    from helpers import tiny_config

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (29, 31, 3), dtype=np.uint8))
    bicubic, bilinear = CropViews(32, 1, (0.8, 0.9), interpolation="bicubic"), CropViews(32, 1, (0.8, 0.9))
    torch.manual_seed(5)
    box = bicubic.crop.make_params([image])
    pil = image.crop((box["left"], box["top"], box["left"] + box["width"], box["top"] + box["height"]))
    expected = torch.from_numpy(np.asarray(pil.resize((32, 32), Image.BICUBIC)).copy()).permute(2, 0, 1).int()
    diffs = []
    for views in (bicubic, bilinear):
        torch.manual_seed(5)
        diffs.append((views(image)["images"][0].int() - expected).abs())
    assert diffs[0].max() <= 1  # rounding only
    assert diffs[1].float().mean() > 3  # a different filter
    with pytest.raises(ValueError, match="unknown crop interpolation 'nearest'"):
        CropViews(32, 1, (0.8, 0.9), interpolation="nearest")
    trainer = Trainer(tiny_config("method.name=declip", "data.crop_interpolation=bicubic",
                                  f"train.output_dir={tmp_path}"))
    assert trainer.loader.dataset.views.interpolation == v2.InterpolationMode.BICUBIC
    trainer.close()
