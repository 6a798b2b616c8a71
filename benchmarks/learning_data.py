"""Real image-caption sets for benchmarks/learning.py, built from installed packages into a cache folder.

Nothing here is generated: the images and their texts come from packages on PyPI / Debian.

* ``digits`` -- scikit-learn's handwritten digits (1,797 real 8x8 scans from the UCI "Optical Recognition of
  Handwritten Digits" set, 10 classes), read straight from the scikit-learn wheel (``pip download
  scikit-learn --no-deps``; scikit-learn itself is not imported). Upscaled to 32 px, white ink on black.
  Training captions: one of a few short caption templates with the class name ("a handwritten seven", ...).
  Task: zero-shot top-1 on a stratified held-out split with the class names.
* ``digits200`` -- the same digits with only 20 training pairs per class (200 pairs; the val and test splits
  of ``digits``): the issue's most data-limited regime, where data efficiency should show if anywhere.
* ``emoji`` -- the colour emoji of Google's Noto Color Emoji font (Debian ``fonts-noto-color-emoji``), every
  single-code-point emoji the font draws, rendered at its bitmap size and resized to 32 px; the caption is
  the code point's Unicode name (``unicodedata.name``, lower-cased: "dog face", "sun behind cloud").
  Task: image->text recall@1 (and text->image) over the held-out images and their own captions.
* ``letters`` -- the 52 Latin letters as drawn by 22 real typefaces shipped in matplotlib's wheel (``pip download
  matplotlib --no-deps``; not installed or imported): DejaVu Sans / Sans Mono / Serif, STIX General and Donald
  Knuth's Computer Modern, each face black on white, centred at 32 px. The caption names the letter, its case
  and the face from the font's own name table ("the capital letter g in STIX General bold italic"). Split by
  FACE (test and val faces are never seen in training). Task: zero-shot top-1 over the 26 letter names.
* ``icons`` -- freedesktop icons as drawn by the 8 Debian icon themes that ship 32 px PNGs (Adwaita, Faenza,
  Tango, elementary-xfce, gnome, mate, nuoveXT2, oxygen; ``apt-get download`` + ``dpkg-deb -x`` into the
  cache, nothing installed). Classes: the icon names that at least 7 of the 8 themes draw ("edit copy",
  "user trash", "go next"; symlinks resolved, so one picture is one image). The caption names the icon, its
  context folder and the theme ("the edit copy icon of the Tango theme"). Split by THEME, like letters by face:
  test and val themes are never seen in training. Task: zero-shot top-1 over the icon names.

Each set is split once, by a fixed seed, into train / val / test. ``val`` is carved from the training data
and is the only split used to choose a recipe; ``test`` is scored only for the final table.

Install: ``apt-get install fonts-noto-color-emoji`` and ``pip download scikit-learn matplotlib --no-deps -d WHEELS``
(the icon themes are fetched by ``apt-get download``, which needs no root).
"""
from __future__ import annotations

import collections
import glob
import gzip
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = 32
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_CAPTIONS = ["a handwritten {w}", "the number {n} written by hand", "a scanned digit {w}",
                  "handwritten digit {n}", "a small picture of a {w}", "the digit {w}"]
DIGIT_ZS_TEMPLATES = ["a handwritten {}.", "a photo of the number {}.", "the digit {}."]
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
LETTER_CAPTIONS = ["the {case} letter {c} in {face}", "{face}, {case} {c}", "a {case} {c} set in {face}",
                   "the letter {c} ({case}), typeface {face}", "{face} glyph of a {case} {c}"]
LETTER_ZS_TEMPLATES = ["the letter {}.", "a printed {}.", "the character {}."]
CM_FACES = {"cmr10": "computer modern roman", "cmb10": "computer modern bold", "cmti10": "computer modern italic",
            "cmss10": "computer modern sans", "cmtt10": "computer modern typewriter",
            "cmmi10": "computer modern math italic"}
ICON_THEMES = {"Adwaita": ("adwaita-icon-theme", "Adwaita"), "Faenza": ("faenza-icon-theme", "Faenza"),
               "Tango": ("tango-icon-theme", "Tango"), "elementary-xfce": ("elementary-xfce-icon-theme",
                                                                           "elementary Xfce"),
               "gnome": ("gnome-icon-theme", "GNOME"), "mate": ("mate-icon-theme", "MATE"),
               "nuoveXT2": ("lxde-icon-theme", "nuoveXT 2"), "oxygen": ("oxygen-icon-theme", "Oxygen")}
ICON_CONTEXTS = {"actions": "action", "apps": "application", "categories": "category", "devices": "device",
                 "emblems": "emblem", "emotes": "emote", "mimetypes": "file type", "places": "place",
                 "status": "status"}
ICON_CAPTIONS = ["the {w} icon of the {theme} theme", "{theme} {ctx} icon: {w}", "an icon of {w} ({theme})",
                 "{w}, a {ctx} icon drawn for {theme}", "{theme} icon theme, {w}"]
ICON_ZS_TEMPLATES = ["an icon of {}.", "the {} icon.", "a {} icon."]
EMOJI_RANGES = [(0x2190, 0x21FF), (0x2300, 0x23FF), (0x2460, 0x27BF), (0x2900, 0x297F), (0x2B00, 0x2BFF),
                (0x1F000, 0x1F1E5), (0x1F200, 0x1F3FA), (0x1F400, 0x1FAFF)]  # no regional letters/skin tones


def _write(out: Path, name: str, records: list[dict], split: dict[str, list[int]], meta: dict) -> Path:
    for part, idx in split.items():
        with open(out / f"{part}.jsonl", "w", encoding="utf-8") as f:
            for i in idx:
                f.write(json.dumps(records[i]) + "\n")
    (out / "meta.json").write_text(json.dumps({"name": name, **meta, "sizes": {k: len(v) for k, v in split.items()}},
                                              indent=1))
    return out


def _split_by_group(groups: list[str], group_of: list[str], n_test: int, n_val: int,
                    held_out_drop: list[bool] | None = None) -> tuple[dict[str, list[int]], set[str], set[str]]:
    """Split record indices by group (a typeface, an icon theme), so test and val looks are never trained on:
    the ``groups`` in sorted order, shuffled by a fixed seed, the first ``n_test`` to test, the next ``n_val``
    to val. ``held_out_drop`` marks records to leave out of val and test (they still train)."""
    groups = sorted(groups)
    random.Random(0).shuffle(groups)
    test, val = set(groups[:n_test]), set(groups[n_test:n_test + n_val])
    keep = [not d for d in held_out_drop] if held_out_drop else [True] * len(group_of)
    split = {"train": [i for i, g in enumerate(group_of) if g not in test | val],
             "val": [i for i, g in enumerate(group_of) if g in val and keep[i]],
             "test": [i for i, g in enumerate(group_of) if g in test and keep[i]]}
    return split, test, val


def _newest_wheel(wheels: Path, dist: str, project: str) -> Path:
    """The newest downloaded wheel of ``project`` (file names use the ``dist`` spelling): its data is read
    straight from the zip, the package is never installed."""
    found = sorted(glob.glob(str(wheels / f"{dist}-*.whl")))
    if not found:
        raise FileNotFoundError(f"no {project} wheel in {wheels}: pip download {project} --no-deps -d {wheels}")
    return Path(found[-1])


def build_digits(cache: Path, wheels: Path) -> Path:
    out = cache / "digits"
    if (out / "meta.json").is_file():
        return out
    wheel = _newest_wheel(wheels, "scikit_learn", "scikit-learn")
    with zipfile.ZipFile(wheel) as z:
        raw = gzip.decompress(z.read("sklearn/datasets/data/digits.csv.gz")).decode()
    data = np.array([[float(v) for v in line.split(",")] for line in raw.strip().splitlines()])
    pixels, labels = data[:, :64].reshape(-1, 8, 8), data[:, 64].astype(int)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    records = []
    for i, (px, y) in enumerate(zip(pixels, labels)):
        img = Image.fromarray((px * 255 / 16).astype(np.uint8)).resize((SIZE, SIZE), Image.BICUBIC).convert("RGB")
        fn = f"images/{i:04d}.png"
        img.save(out / fn)
        cap = rng.choice(DIGIT_CAPTIONS).format(w=DIGIT_WORDS[y], n=y)
        records.append({"filename": fn, "caption": cap, "label": int(y), "label_name": DIGIT_WORDS[y]})
    # stratified: per class 1/3 test, 2/3 train of which 1/6 val
    split = {"train": [], "val": [], "test": []}
    for c in range(10):
        idx = [i for i, y in enumerate(labels) if y == c]
        rng.shuffle(idx)
        n_test = len(idx) // 3
        n_val = (len(idx) - n_test) // 6
        split["test"] += idx[:n_test]
        split["val"] += idx[n_test:n_test + n_val]
        split["train"] += idx[n_test + n_val:]
    for v in split.values():
        v.sort()
    return _write(out, "digits", records, split, {
        "source": f"scikit-learn wheel {wheel.name}: sklearn/datasets/data/digits.csv.gz",
        "task": "zeroshot", "classnames": DIGIT_WORDS, "templates": DIGIT_ZS_TEMPLATES})


def build_digits_subset(cache: Path, digits: Path, per_class: int = 20) -> Path:
    """``digits`` with a fixed stratified subset of its training pairs; same images, val and test."""
    out = cache / f"digits{per_class * 10}"
    if (out / "meta.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "images").exists():
        (out / "images").symlink_to(digits / "images", target_is_directory=True)
    train = load_split(digits, "train")
    rng = random.Random(0)
    keep = []
    for c in range(10):
        idx = [i for i, r in enumerate(train) if r["label"] == c]
        keep += rng.sample(idx, per_class)
    val = load_split(digits, "val")
    records = train + val + load_split(digits, "test")
    n_train, n_val = len(train), len(val)
    split = {"train": sorted(keep), "val": list(range(n_train, n_train + n_val)),
             "test": list(range(n_train + n_val, len(records)))}
    meta = json.loads((digits / "meta.json").read_text())
    meta.pop("sizes", None)
    meta.pop("name", None)
    return _write(out, f"digits{per_class * 10}", records, split,
                  {**meta, "subset_of": "digits", "train_pairs_per_class": per_class})


def build_emoji(cache: Path) -> Path:
    out = cache / "emoji"
    if (out / "meta.json").is_file():
        return out
    if not os.path.isfile(EMOJI_FONT):
        raise FileNotFoundError(f"{EMOJI_FONT} missing: apt-get install fonts-noto-color-emoji")
    font = ImageFont.truetype(EMOJI_FONT, 109)  # the CBDT bitmap strike

    def render(ch: str) -> Image.Image:
        im = Image.new("RGB", (136, 128), "white")
        ImageDraw.Draw(im).text((0, 0), ch, font=font, embedded_color=True)
        return im

    missing = render("\ue000").tobytes()  # what the font draws for a code point it lacks
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for lo, hi in EMOJI_RANGES:
        for cp in range(lo, hi + 1):
            ch = chr(cp)
            name = unicodedata.name(ch, "")
            if not name:
                continue
            im = render(ch)
            if im.tobytes() == missing or im.convert("L").getextrema()[0] > 200:
                continue
            box = im.getbbox()
            im = im.crop((0, 0, 136, 128)).resize((SIZE, SIZE), Image.LANCZOS)
            fn = f"images/u{cp:05x}.png"
            im.save(out / fn)
            records.append({"filename": fn, "caption": name.lower(), "codepoint": cp, "bbox": box})
    rng = random.Random(0)
    idx = list(range(len(records)))
    rng.shuffle(idx)
    n_test = n_val = len(idx) // 8
    split = {"test": sorted(idx[:n_test]), "val": sorted(idx[n_test:n_test + n_val]),
             "train": sorted(idx[n_test + n_val:])}
    return _write(out, "emoji", records, split, {"source": f"Debian fonts-noto-color-emoji: {EMOJI_FONT}",
                                                  "task": "retrieval"})


def build_letters(cache: Path, wheels: Path) -> Path:
    import io
    import string

    out = cache / "letters"
    if (out / "meta.json").is_file():
        return out
    wheel = _newest_wheel(wheels, "matplotlib", "matplotlib")
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if n.startswith("matplotlib/mpl-data/fonts/ttf/") and (
            (n.split("/")[-1].startswith(("DejaVu", "STIXGeneral")) and "Display" not in n)
            or n.split("/")[-1][:-4] in CM_FACES))
        fonts = {n.split("/")[-1][:-4]: z.read(n) for n in names}
    (out / "images").mkdir(parents=True, exist_ok=True)
    records, face_of = [], []
    for key, blob in fonts.items():
        font = ImageFont.truetype(io.BytesIO(blob), 96)
        family, style = font.getname()
        face = CM_FACES.get(key) or f"{family} {style}".lower().replace(" book", "").replace(" regular", "")
        for ch in string.ascii_letters:
            ink = Image.new("L", (192, 192), 0)
            ImageDraw.Draw(ink).text((48, 24), ch, font=font, fill=255)
            box = ink.getbbox()
            glyph = ink.crop(box)
            scale = 26 / max(glyph.size)
            glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))),
                                 Image.LANCZOS)
            canvas = Image.new("L", (SIZE, SIZE), 0)
            canvas.paste(glyph, ((SIZE - glyph.width) // 2, (SIZE - glyph.height) // 2))
            fn = f"images/{key}-{ord(ch):03d}.png"
            Image.eval(canvas, lambda v: 255 - v).convert("RGB").save(out / fn)
            case = "capital" if ch.isupper() else "small"
            cap = random.Random(f"{key}{ch}").choice(LETTER_CAPTIONS).format(case=case, c=ch.lower(), face=face)
            records.append({"filename": fn, "caption": cap, "label": string.ascii_lowercase.index(ch.lower()),
                            "label_name": ch.lower(), "face": face})
            face_of.append(key)
    split, test, val = _split_by_group(list(fonts), face_of, n_test=6, n_val=3)
    return _write(out, "letters", records, split, {
        "source": f"matplotlib wheel {wheel.name}: mpl-data/fonts/ttf ({len(fonts)} faces)",
        "task": "zeroshot", "classnames": list(string.ascii_lowercase), "templates": LETTER_ZS_TEMPLATES,
        "faces": {"test": sorted(test), "val": sorted(val)}})


def _icon_theme_files(cache: Path) -> dict[str, dict[str, tuple[str, bool, str]]]:
    """theme -> icon name -> (resolved file, is the real file rather than an alias, context folder), for the
    non-symbolic 32 px PNGs. The Debian packages are downloaded and unpacked into the cache once."""
    debs, root = cache / "icon-debs", cache / "icon-debs" / "root"
    if not (root / "usr/share/icons/oxygen").is_dir():
        if not shutil.which("apt-get"):
            raise FileNotFoundError("icons needs apt-get (Debian) to download the icon theme packages")
        debs.mkdir(parents=True, exist_ok=True)
        packages = sorted({p for p, _ in ICON_THEMES.values()})
        subprocess.run(["apt-get", "download", *packages], cwd=debs, check=True, capture_output=True)
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    themes = {}
    for theme in ICON_THEMES:
        files = {}
        for f in sorted(glob.glob(str(root / "usr/share/icons" / theme / "**" / "*.png"), recursive=True)):
            parts = Path(f).relative_to(root / "usr/share/icons" / theme).parts
            if not {"32", "32x32"} & set(parts) or "symbolic" in f:
                continue
            name = Path(f).stem
            ctx = next((ICON_CONTEXTS[p] for p in parts if p in ICON_CONTEXTS), "other")
            real = os.path.realpath(f)
            files.setdefault(name, (real, Path(real).stem == name, ctx))
        themes[theme] = files
    return themes


def build_icons(cache: Path, min_themes: int = 7) -> Path:
    out = cache / "icons"
    if (out / "meta.json").is_file():
        return out
    themes = _icon_theme_files(cache)
    count = collections.Counter(name for files in themes.values() for name in files)
    vocab = sorted(n for n, c in count.items() if c >= min_themes)
    # synonyms: two names drawn by one file in >= 3 themes are one class, named by the name that is more often
    # the real file (an alias is a symlink to it); on a tie, the first in sort order
    real = {n: sum(1 for f in themes.values() if n in f and f[n][1]) for n in vocab}
    for a, b in itertools.combinations(list(vocab), 2):
        if a in vocab and b in vocab:
            shared = sum(1 for f in themes.values() if a in f and b in f and f[a][0] == f[b][0])
            if shared >= 3:
                vocab.remove(b if real[a] >= real[b] else a)
    words = [re.sub(r"[-_.]+", " ", n) for n in vocab]
    (out / "images").mkdir(parents=True, exist_ok=True)
    records, theme_of, ambiguous = [], [], []
    for theme, files in themes.items():
        by_file: dict[str, list[int]] = {}
        for c, n in enumerate(vocab):
            if n in files:
                by_file.setdefault(files[n][0], []).append(c)
        for path, classes in sorted(by_file.items()):
            with Image.open(path) as src:
                im = src.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im).convert("RGB")
            if im.size != (SIZE, SIZE):
                im = im.resize((SIZE, SIZE), Image.LANCZOS)
            c = classes[0]
            fn = f"images/{theme}-{vocab[c]}.png"
            im.save(out / fn)
            ctx = files[vocab[c]][2]
            cap = random.Random(f"{theme}{vocab[c]}").choice(ICON_CAPTIONS).format(
                w=words[c], ctx=ctx, theme=ICON_THEMES[theme][1])
            records.append({"filename": fn, "caption": cap, "label": c, "label_name": words[c], "theme": theme,
                            "context": ctx})
            theme_of.append(theme)
            ambiguous.append(len(classes) > 1)
    split, test, val = _split_by_group(list(ICON_THEMES), theme_of, n_test=2, n_val=1, held_out_drop=ambiguous)
    train_pixels = {(out / records[i]["filename"]).read_bytes() for i in split["train"]}
    same = sum(1 for i in split["test"] if (out / records[i]["filename"]).read_bytes() in train_pixels)
    return _write(out, "icons", records, split, {
        "source": "Debian " + ", ".join(sorted({p for p, _ in ICON_THEMES.values()})) + " (32 px PNGs)",
        "task": "zeroshot", "classnames": words, "templates": ICON_ZS_TEMPLATES,
        "themes": {"test": sorted(test), "val": sorted(val)}, "min_themes": min_themes,
        "ambiguous_dropped": {"val": sum(ambiguous[i] for i, t in enumerate(theme_of) if t in val),
                              "test": sum(ambiguous[i] for i, t in enumerate(theme_of) if t in test)},
        "test_files_identical_to_a_training_file": same})


def build_all(cache: str | Path, wheels: str | Path) -> dict[str, Path]:
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    digits = build_digits(cache, Path(wheels))
    return {"digits": digits, "digits200": build_digits_subset(cache, digits), "emoji": build_emoji(cache),
            "letters": build_letters(cache, Path(wheels)), "icons": build_icons(cache)}


def load_split(root: Path, part: str) -> list[dict]:
    with open(root / f"{part}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def load_images(root: Path, records: list[dict]) -> list[Image.Image]:
    out = []
    for r in records:
        with Image.open(root / r["filename"]) as im:
            out.append(im.convert("RGB"))
    return out


if __name__ == "__main__":
    import sys

    paths = build_all(sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/declip-learning"),
                      sys.argv[2] if len(sys.argv) > 2 else "/tmp/learn-cache/wheels")
    for k, p in paths.items():
        print(k, p, (p / "meta.json").read_text())
