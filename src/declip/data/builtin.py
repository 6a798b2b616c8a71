"""The built-in default data set: procedurally drawn scenes with natural-language captions.

Nothing is downloaded or stored: sample ``i`` of split ``s`` is drawn from a random generator seeded by
(split seed, i), so every machine sees the same pixels. Each scene is one object (10 shapes, 8 colours,
3 sizes, 5 positions, a rotation within 20 degrees) on a plain, gradient or noisy background, plus an optional small
distractor blob. Captions come from 16 templates with synonyms for sizes and colours and mention 1-3
attributes, so text and image share structure a model has to discover: the shape word is in every caption,
in varied phrasing; colour in fewer than half (colour is the easiest cue, and DeCLIP's colour jitter blurs it).

The held-out zero-shot task classifies the shape of 500 scenes of a separate split (50 per class, chance
10%) using prompt templates that never appear verbatim in the training captions.
"""
from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

from .seeding import item_seed

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring", "crescent", "heart")
COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30),
    "orange": (250, 140, 20), "purple": (140, 40, 180), "pink": (250, 120, 190), "brown": (120, 70, 30),
}
COLOUR_WORDS = {"red": ("red", "crimson", "scarlet"), "green": ("green",), "blue": ("blue", "navy"),
                "yellow": ("yellow",), "orange": ("orange",), "purple": ("purple", "violet"),
                "pink": ("pink",), "brown": ("brown",)}
SIZES = {"small": (0.26, 0.32), "medium": (0.34, 0.40), "large": (0.42, 0.48)}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "medium": ("medium", "mid-sized"),
              "large": ("large", "big", "huge")}
POSITIONS = {"center": (0.5, 0.5), "left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3),
             "bottom": (0.5, 0.7)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128),
               "beige": (225, 210, 180), "teal": (40, 120, 120)}
TEMPLATES = (  # the shape word is in every caption; colour in fewer than half, so it cannot carry them alone
    "a {size} {shape} on a {bg} background",
    "a photo of a {colour} {shape}",
    "a {shape} in the {pos} of the image",
    "there is a {size} {shape} here",
    "a simple drawing of a {shape}",
    "an image showing a {shape} that is {colour}",
    "the {shape} is {size}",
    "close-up of a {shape} against {bg}",
    "{shape}",
    "a {style} {shape} near the {pos}",
    "my favourite {shape}, a {size} one",
    "a {bg} picture with a {shape}",
    "look at this {size} {shape}",
    "{colour} {shape}",
    "a {style} {shape} drawn on {bg}",
    "someone painted a {shape} in {colour}",
)
ZEROSHOT_TEMPLATES = ("a picture of a {}.", "an example of a {}.", "a {} shape.", "this is a {}.")
TRAIN_SEED, EVAL_SEED = 1234, 98765
EVAL_SIZE = 500
RESOLUTION = 80  # drawn size; training crops and resizes to the model's input


def _polygon(cx, cy, r, n, rot, inner=None):
    pts, m = [], n * (2 if inner else 1)
    for k in range(m):
        rad = (inner if inner and k % 2 else 1.0) * r
        a = rot + k * 2 * math.pi / m
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _draw_shape(d: ImageDraw.ImageDraw, shape, cx, cy, r, rot, fill, bg):
    kw = {"fill": fill}
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], **kw)
    elif shape == "square":
        d.polygon(_polygon(cx, cy, r * 1.1, 4, rot + math.pi / 4), **kw)
    elif shape == "triangle":
        d.polygon(_polygon(cx, cy, r * 1.15, 3, rot - math.pi / 2), **kw)
    elif shape == "star":
        d.polygon(_polygon(cx, cy, r * 1.2, 5, rot - math.pi / 2, inner=0.45), **kw)
    elif shape == "diamond":
        pts = [(cx, cy - r * 1.2), (cx + r * 0.7, cy), (cx, cy + r * 1.2), (cx - r * 0.7, cy)]
        d.polygon(pts, **kw)
    elif shape == "hexagon":
        d.polygon(_polygon(cx, cy, r * 1.05, 6, rot), **kw)
    elif shape == "cross":
        t = r * 0.35
        c, s = math.cos(rot), math.sin(rot)
        for ax, ay in ((1, 0), (0, 1)):
            dx, dy = ax * c - ay * s, ax * s + ay * c  # bar direction
            px, py = -dy, dx
            pts = [(cx + dx * r + px * t, cy + dy * r + py * t), (cx + dx * r - px * t, cy + dy * r - py * t),
                   (cx - dx * r - px * t, cy - dy * r - py * t), (cx - dx * r + px * t, cy - dy * r + py * t)]
            d.polygon(pts, fill=fill)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(3, int(r * 0.3)))
    elif shape == "crescent":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        off = r * 0.55
        ox, oy = cx + off * math.cos(rot), cy + off * math.sin(rot)
        d.ellipse([ox - r * 0.9, oy - r * 0.9, ox + r * 0.9, oy + r * 0.9], fill=bg)
    elif shape == "heart":
        q = r * 0.55
        d.ellipse([cx - 2 * q, cy - 1.6 * q, cx, cy + 0.4 * q], fill=fill)
        d.ellipse([cx, cy - 1.6 * q, cx + 2 * q, cy + 0.4 * q], fill=fill)
        d.polygon([(cx - 1.95 * q, cy - 0.3 * q), (cx + 1.95 * q, cy - 0.3 * q), (cx, cy + 1.9 * q)], fill=fill)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)


def _jitter(rgb, rng, amount=25):
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def render_scene(rng: random.Random, shape: str | None = None) -> tuple[Image.Image, dict]:
    """Draw one scene; returns the image and its attributes."""
    attrs = {
        "shape": shape or rng.choice(SHAPES), "colour": rng.choice(tuple(COLOURS)), "size": rng.choice(tuple(SIZES)),
        "pos": rng.choice(tuple(POSITIONS)), "bg": rng.choice(tuple(BACKGROUNDS)),
        "style": rng.choice(("solid", "filled", "plain")),
    }
    n = RESOLUTION
    bg = _jitter(BACKGROUNDS[attrs["bg"]], rng, 10)
    img = Image.new("RGB", (n, n), bg)
    d = ImageDraw.Draw(img)
    kind = rng.random()
    if kind < 0.3:  # vertical gradient
        top = _jitter(bg, rng, 40)
        for y in range(n):
            t = y / (n - 1)
            d.line([(0, y), (n, y)], fill=tuple(int(a * (1 - t) + b * t) for a, b in zip(top, bg)))
    elif kind < 0.5:  # speckle noise
        for _ in range(n * 3):
            x, y = rng.randrange(n), rng.randrange(n)
            d.point((x, y), fill=_jitter(bg, rng, 60))
    if rng.random() < 0.3:  # small distractor blob
        x, y, s = rng.randrange(n), rng.randrange(n), rng.randint(2, 5)
        d.ellipse([x - s, y - s, x + s, y + s], fill=_jitter(bg, rng, 80))
    lo, hi = SIZES[attrs["size"]]
    r = rng.uniform(lo, hi) * n / 2 * 1.4
    px, py = POSITIONS[attrs["pos"]]
    cx, cy = (px + rng.uniform(-0.05, 0.05)) * n, (py + rng.uniform(-0.05, 0.05)) * n
    fill = _jitter(COLOURS[attrs["colour"]], rng)
    rot = rng.uniform(-0.35, 0.35) * (attrs["shape"] != "heart")  # +-20 degrees: a square stays no diamond
    _draw_shape(d, attrs["shape"], cx, cy, r, rot, fill, bg)
    return img, attrs


def caption_for(attrs: dict, rng: random.Random) -> str:
    words = {
        "shape": attrs["shape"], "colour": rng.choice(COLOUR_WORDS[attrs["colour"]]),
        "size": rng.choice(SIZE_WORDS[attrs["size"]]), "pos": attrs["pos"], "bg": attrs["bg"],
        "style": attrs["style"],
    }
    return rng.choice(TEMPLATES).format(**words)


def _rng(seed: int, index: int) -> random.Random:
    return random.Random(item_seed(seed, index))


class BuiltinPairs:
    """Map-style source of (image, caption) training pairs."""

    def __init__(self, size: int = 20000, seed: int = TRAIN_SEED):
        self.size, self.seed = size, seed

    def __len__(self) -> int:
        return self.size

    def key(self, index: int) -> str:
        return f"builtin-{index:08d}"

    def load(self, index: int) -> tuple[Image.Image, str]:
        rng = _rng(self.seed, index)
        img, attrs = render_scene(rng)
        return img, caption_for(attrs, rng)


class BuiltinZeroShot:
    """The held-out zero-shot classification task: shape of the object, balanced classes."""

    classnames = SHAPES
    templates = ZEROSHOT_TEMPLATES

    def __init__(self, size: int = EVAL_SIZE, seed: int = EVAL_SEED):
        self.size, self.seed = size, seed

    def __len__(self) -> int:
        return self.size

    def load(self, index: int) -> tuple[Image.Image, int]:
        label = index % len(SHAPES)
        img, _ = render_scene(_rng(self.seed, index), shape=SHAPES[label])
        return img, label
