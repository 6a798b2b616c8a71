"""Bad data is counted per reason, never crashes a run, and odd image modes convert to RGB correctly; the
trainer stops past data.max_skip_rate with examples naming the manifest line."""
import io
import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from declip.data.loader import MAX_EXAMPLES, DataSpec, PairDataset, build_train_loader
from declip.data.manifest import ManifestSource
from declip.data.errors import SKIP_REASONS, BadSample
from declip.errors import DataQualityError
from declip.train.health import SkipRateGuard

W, H = 64, 48
LONG = " ".join(["a long caption about a small boat on a lake"] * 40)


def _enc(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _good(seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((W, H), Image.BICUBIC)


def corrupt_fixture(root):
    """Write images and a manifest mixing good and bad samples; returns (manifest, expected reason per line,
    expected pixel checks per line)."""
    root.mkdir(parents=True, exist_ok=True)
    good = _enc(_good(0), "JPEG", quality=90)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[:, :32] = (0, 0, 255, 255)  # opaque blue | half-transparent red | fully transparent
    rgba[:, 32:48] = (255, 0, 0, 128)
    palette = Image.new("P", (W, H), 0)
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.paste(1, (0, 0, 32, H))
    files = {
        "good.jpg": good,
        "zero.jpg": b"",
        "truncated.jpg": good[: len(good) // 2],
        "garbage.jpg": np.random.default_rng(1).bytes(700),
        "cmyk.jpg": _enc(Image.new("CMYK", (W, H), (0, 255, 255, 0)), "JPEG", quality=95),
        "gray.jpg": _enc(Image.new("L", (W, H), 100), "JPEG", quality=95),
        "palette.png": _enc(palette, "PNG"),
        "rgba.png": _enc(Image.fromarray(rgba, "RGBA"), "PNG"),
        "gray16.png": _enc(Image.fromarray(np.full((H, W), 32767, np.uint16)), "PNG"),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    rows = [  # (line text, expected reason or None)
        (json.dumps({"filename": "good.jpg", "caption": "a good photo"}), None),
        (json.dumps({"filename": "missing.jpg", "caption": "no file"}), "missing_file"),
        (json.dumps({"filename": "zero.jpg", "caption": "empty file"}), "empty_file"),
        (json.dumps({"filename": "truncated.jpg", "caption": "cut short"}), "corrupt_image"),
        (json.dumps({"filename": "garbage.jpg", "caption": "random bytes"}), "corrupt_image"),
        (json.dumps({"filename": "cmyk.jpg", "caption": "a cmyk red"}), None),
        (json.dumps({"filename": "gray.jpg", "caption": "a gray square"}), None),
        (json.dumps({"filename": "palette.png", "caption": ["a palette image", "ignored"]}), None),
        (json.dumps({"filename": "rgba.png", "caption": "transparent parts"}), None),
        (json.dumps({"filename": "good.jpg", "caption": "   \t "}), "empty_caption"),
        (json.dumps({"filename": "good.jpg", "caption": "一只猫在沙发上睡觉"}, ensure_ascii=False),
         "non_latin_caption"),
        ('{"filename": "good.jpg", "caption": "unterminated', "bad_line"),
        (json.dumps({"filename": "good.jpg", "caption": LONG}), None),
        (json.dumps({"filename": "good.jpg"}), "bad_line"),
        (json.dumps({"filename": "gray16.png", "caption": "sixteen bit"}), None),
        (json.dumps({"filename": "good.jpg", "caption": []}), "empty_caption"),
    ]
    manifest = root.parent / "bad.jsonl"
    manifest.write_text("\n".join(r for r, _ in rows) + "\n", encoding="utf-8")
    return manifest, [reason for _, reason in rows]


@pytest.fixture
def bad_data(tmp_path):
    manifest, reasons = corrupt_fixture(tmp_path / "images")
    return manifest, tmp_path / "images", reasons


def test_each_line_fails_for_its_reason(bad_data):
    manifest, root, reasons = bad_data
    src = ManifestSource(manifest, root, image_size=32)
    got = []
    for i in range(len(src)):
        try:
            img, cap = src.load(i)
            assert img.mode == "RGB" and img.size == (W, H)
            got.append(None)
        except BadSample as e:
            got.append(e.reason)
            if e.reason == "bad_line":
                assert f"{manifest}:{i + 1}: " in e.detail  # FILE:LINE
    assert got == reasons
    counts = Counter(r for r in got if r)
    assert counts == {"missing_file": 1, "empty_file": 1, "corrupt_image": 2, "empty_caption": 2,
                      "non_latin_caption": 1, "bad_line": 2}
    assert src.load(12)[1] == LONG  # over-long captions are kept (the tokenizer truncates)


def test_odd_modes_convert_to_rgb(bad_data):
    manifest, root, _ = bad_data
    src = ManifestSource(manifest, root)
    px = {i: np.asarray(src.load(i)[0]).astype(int) for i in (5, 6, 7, 8, 14)}
    assert np.abs(px[5] - (255, 0, 0)).max() <= 3  # CMYK red (JPEG-coded)
    assert np.array_equal(px[6], np.full((H, W, 3), 100))  # grayscale replicated to 3 channels
    assert (px[7][:, :32] == (200, 100, 50)).all() and (px[7][:, 32:] == (10, 20, 30)).all()  # palette
    assert (px[8][:, :32] == (0, 0, 255)).all()  # opaque part unchanged
    assert (px[8][:, 32:48] == (255, 127, 127)).all()  # 50% red over white
    assert (px[8][:, 48:] == 255).all()  # transparent -> white
    assert (px[14] == 127).all()  # 16-bit gray 32767 -> 8-bit 127, not clipped to 255


def test_dataset_counts_every_failed_attempt(bad_data):
    manifest, root, reasons = bad_data
    ds = PairDataset(ManifestSource(manifest, root, image_size=32), DataSpec(), image_size=32, seed=3)
    first_failures = Counter()
    fully_listed = 0
    per_sample = torch.zeros(len(SKIP_REASONS), dtype=torch.long)
    for i, want in enumerate(reasons):
        s = ds[(0, i)]
        assert s["images"].shape == (1, 3, 32, 32) and torch.isfinite(s["images"]).all()
        assert reasons[int(s["index"])] is None  # the substitute is a usable sample
        if want is None:
            assert int(s["index"]) == i and s["skips"].sum() == 0 and s["skip_examples"] == []
            continue
        ex = s["skip_examples"]
        assert ex[0].startswith(f"bad.jsonl:{i + 1}: {want}: ")  # the example names the line
        first_failures[want] += 1
        if len(ex) < 3:  # every failed attempt is listed: the counts must match them exactly
            listed = Counter(e.split(": ")[1] for e in ex)
            assert {r: int(c) for r, c in zip(SKIP_REASONS, s["skips"]) if c} == dict(listed)
            fully_listed += 1
        per_sample += s["skips"]
    assert first_failures == Counter(r for r in reasons if r)
    assert fully_listed > 0  # the exact per-attempt check above really ran
    # the real loader over one epoch sums exactly the per-sample counts (same seeds, any order)
    loader = build_train_loader(ds, batch_size=len(reasons), num_workers=0, rank=0, world_size=1, seed=3)
    batch = next(iter(loader))
    assert torch.equal(batch["skips"], per_sample)
    assert len(batch["skip_examples"]) == MAX_EXAMPLES


def test_trainer_stops_past_the_skip_rate_naming_examples(bad_data, tiny_cfg):
    manifest, root, reasons = bad_data
    cfg = tiny_cfg("data.source=manifest", f"data.path={manifest}", f"data.root={root}", "data.max_skip_rate=0.2")
    ds = PairDataset(ManifestSource(manifest, root, image_size=32), DataSpec(), image_size=32)
    guard, consumed = SkipRateGuard(cfg.data.max_skip_rate), 0
    with pytest.raises(DataQualityError) as e:
        for batch in build_train_loader(ds, 8, 0, 0, 1, seed=0):  # 9 of 16 lines unusable
            consumed += 8
            guard.add(batch["skips"], consumed, batch["skip_examples"])
    msg = str(e.value)
    assert "data.max_skip_rate=20.0%" in msg and "of " in msg and "bad.jsonl:" in msg
    assert any(f"'{r}'" in msg for r in SKIP_REASONS)
    assert consumed + guard.total >= 200  # not before 200 samples: a few bad ones early are noise

    guard, consumed = SkipRateGuard(0.9), 0  # same data under a tolerant threshold: runs on
    loader = iter(build_train_loader(ds, 8, 0, 0, 1, seed=0))
    for _ in range(40):
        batch = next(loader)
        consumed += 8
        guard.add(batch["skips"], consumed, batch["skip_examples"])
    bad = guard.total
    assert consumed == 40 * 8 and bad + consumed >= 200
    assert 0.2 < bad / (bad + consumed) <= 0.9  # over the strict threshold above, under this one: it ran on
    assert set(guard.by_reason()) == {r for r in reasons if r}  # every reason counted
