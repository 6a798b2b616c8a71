"""Labelled manifests beside caption manifests: which kind a file is, and ``declip data check`` of a labelled one.

A labelled manifest is JSON lines ``{"filename", "label", "label_name"?}`` (the zero-shot / linear-probe form
that ``declip eval --val-manifest`` reads); a caption manifest is the training form (``filename``,
``caption``). ``data check`` used to read every file as captions and rejected each labelled line with "missing
key 'caption'"; here the kind is told from the file itself and a labelled file is checked for what evaluation
needs: integer labels >= 0, in range when the class count is known (``--classnames``), one name per label, and
every image decodable as evaluation decodes it.

Import-light on purpose (no torch): ``data check`` must start fast; the eval reader uses :func:`label_problem`
too, so both say the same about the same line.
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TextIO

from .. import storage
from .decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from .errors import SKIP_REASONS, BadSample
from .scan import CHECK_WORDING, Problems, at_line, ordered

LABELLED, CAPTIONS = "labelled", "captions"
# reasons of a labelled check besides the skip reasons: a contradicting label_name, labels with no name at all
LABEL_REASONS = ("label_name_conflict", "unnamed_label")


def manifest_kind(path: str | Path, probe_lines: int = 100) -> str:
    """``labelled`` when the first JSON-object line among the first ``probe_lines`` has a ``label`` and no
    ``caption``; else ``captions`` (a broken caption file is then checked as one and its lines named)."""
    with (storage.open_file(str(path)) if storage.is_remote(path) else open(path, "rb")) as f:
        for _, raw in zip(range(probe_lines), f):
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict):
                return LABELLED if "label" in rec and "caption" not in rec else CAPTIONS
    return CAPTIONS


def label_problem(label) -> str | None:
    """Why ``label`` cannot index a class (None when it can): a JSON integer >= 0, not a bool."""
    if isinstance(label, bool) or not isinstance(label, int) or label < 0:
        return f"'label' must be a non-negative integer, got {label!r}"
    return None


def read_class_names(path: str | Path) -> list[str]:
    """The non-blank lines of a class-name file (line i names label i), as ``declip eval --classnames``."""
    return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]


def check_labelled(path: str, root: str, threads: int = 8, max_examples: int = 5, image_size: int = 224,
                   progress: bool = True, out: TextIO | None = None, classnames: str | None = None,
                   timeout_s: float = 60.0, max_pixels: int = DEFAULT_MAX_PIXELS,
                   allow_outside_root: bool = False, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Check a labelled manifest line by line (JSON, label, image) and as a whole (one name per label, every
    label named); print a report with the class count and return it as a dict (``problems`` by reason).
    Images are read as training reads them: inside the root, within the size limit and the timeout."""
    from .bounded import call_bounded
    from .decode import load_image
    from .manifest import ManifestSource

    out = out or sys.stdout
    t0 = time.perf_counter()
    src = ManifestSource(path, root, image_size, max_pixels=max_pixels, allow_outside_root=allow_outside_root,
                         max_bytes=max_bytes)
    names = read_class_names(classnames) if classnames else None

    def one(i: int):
        try:
            rec = src.parse(i, ("filename", "label"))
            why = label_problem(rec["label"])
            if why is None and names is not None and rec["label"] >= len(names):
                why = f"label {rec['label']} outside [0, {len(names)}) ({classnames} names {len(names)} classes)"
            if why:
                raise BadSample("bad_line", why)
            image = src.image_path(rec, i)
            call_bounded(lambda: load_image(image, image_size, max_pixels, max_bytes), timeout_s,
                         f"{src.path}:{i + 1}", **CHECK_WORDING)
            return None, (rec["label"], rec.get("label_name"))
        except BadSample as e:
            return (e.reason, at_line(src, i, e.detail)), None

    problems = Problems(max_examples)
    note = problems.note
    named: dict[int, str] = {}
    labels: Counter = Counter()
    for i, (bad, good) in enumerate(ordered(one, len(src), threads, progress, "check")):
        if bad:
            note(*bad)
            continue
        label, name = good
        name = name.strip() if isinstance(name, str) and name.strip() else None
        if name is not None and named.setdefault(label, name) != name:
            note("label_name_conflict", f"{path}:{i + 1}: label_name {name!r} contradicts {named[label]!r} "
                                        f"for label {label}")
            continue
        labels[label] += 1
    unnamed = sorted(c for c in labels if c not in named) if names is None else []
    if unnamed:
        note("unnamed_label", f"label(s) {unnamed[:10]} have no label_name: give the class names with "
                              "--classnames FILE (one per line, line i naming label i), here and to declip eval")
    n, n_bad = len(src), problems.total - bool(unnamed)
    classes = len(names) if names is not None else len(labels)
    print(f"checked {n} lines of {path} (labelled manifest; images under {root}) in "
          f"{time.perf_counter() - t0:.1f} s", file=out)
    print(f"ok: {n - n_bad}", file=out)
    print(f"classes: {classes} ({'named by ' + classnames if names is not None else 'labels that occur'}"
          f"{f', labels {min(labels)}..{max(labels)}' if labels else ''}; smallest class "
          f"{min(labels.values(), default=0)} images)", file=out)
    if problems.total:
        problems.print((*SKIP_REASONS, *LABEL_REASONS), out, f"problems: {problems.total}")
    return {"kind": LABELLED, "lines": n, "ok": n - n_bad, "classes": classes, "problems": dict(problems.counts),
            "examples": problems.examples, "long_captions": 0}
