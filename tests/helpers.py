"""What the tests share besides fixtures (those are in conftest.py): the one tiny config, the metrics readers
and the loader of the benchmark scripts.

A plain module rather than conftest.py because tests/dist_worker.py runs as a script in processes of its own
and builds its cases from the same tiny config.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path
from types import ModuleType

from declip.config import Config, dump_config, load_config
from declip.train.metrics import read_metrics

# The tiny config: tiny ViT towers, a short run on generated data, no progress bar, TensorBoard or periodic
# checkpoints. Every test that builds a method or trains starts from it.
TINY = [
    "train.steps=4", "train.batch_size=8", "data.num_workers=0", "model.vision.image_size=32",
    "model.vision.patch_size=8", "model.vision.width=64", "model.text.width=64", "model.embed_dim=64",
    "method.queue_size=64", "method.simsiam_proj_dim=32", "method.simsiam_pred_dim=16",
    "train.progress=false", "train.tensorboard=false", "eval.max_images=20", "train.log_every=1",
    "optim.warmup_steps=2", "train.ckpt_every=0", "data.builtin_size=512",
    "train.device=cpu",  # the same on a machine with an accelerator; device tests say so (marker accelerator)
]
# ``small=True``: the same, smaller still, where a test pays for it several times over (2 ranks x 4 cases in
# tests/test_distributed.py, two full passes per gradient comparison in tests/test_precision.py).
SMALLER = [
    "train.batch_size=4", "model.vision.patch_size=16", "model.vision.width=32", "model.vision.head_width=16",
    "model.text.width=32", "model.text.heads=2", "model.embed_dim=32", "model.text.context_length=16",
    "method.queue_size=16", "method.simsiam_proj_dim=16", "method.simsiam_pred_dim=8", "data.builtin_size=64",
    "optim.warmup_steps=1", "eval.max_images=8", "eval.batch_size=8", "eval.num_workers=0",
]
# A ResNet image tower at the tiny-rn preset's own sizes (TINY's vision width and head width are a ViT's).
TINY_RN = ["model.preset=tiny-rn", "model.vision.width=16", "model.vision.head_width=32"]


def tiny_overrides(*overrides: str, small: bool = False) -> list[str]:
    """The tiny config as ``key=value`` overrides (for ``load_config`` or a ``declip`` command line); the
    ``overrides`` given come last and win."""
    return [*TINY, *(SMALLER if small else []), *overrides]


def tiny_config(*overrides: str, small: bool = False) -> Config:
    return load_config(None, tiny_overrides(*overrides, small=small))


def write_tiny_config(path: Path, *overrides: str, small: bool = False) -> Path:
    """The tiny config as a complete YAML file, for ``declip train --config`` in a subprocess."""
    path.write_text(dump_config(tiny_config(*overrides, small=small)))
    return path


# -------------------------------------------------------------------------------------------- README
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_section(title: str) -> str:
    """The text of the README's ``## title`` section (up to the next ``## ``)."""
    return README.read_text(encoding="utf-8").split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def readme_commands(section: str, program: str = "declip") -> list[list[str]]:
    """Every ``program ...`` command of the section's ```bash blocks, as argv lists (program name dropped),
    a line ending in a backslash joined with the next one, as the shell joins them: the README's commands as a
    reader would paste them."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line)
            if argv and argv[0] == program:
                commands.append(argv[1:])
    return commands


# ------------------------------------------------------------------------------------------- metrics
def metrics(run: Path, kind: str = "train") -> list[dict]:
    """The ``kind`` records of a run's metrics.jsonl as declip reads them (``read_metrics``: one record per
    step, the last one written wins; a line cut short by a kill is skipped)."""
    return [r for r in read_metrics(run) if r["kind"] == kind]


def last_logged_step(run: Path) -> int:
    """The last train step a (possibly running) process has logged so far; 0 before its first record. Polls
    the file itself: asking ``read_metrics`` for the run folder races with the run creating that folder (not a
    folder yet when checked, one when opened)."""
    try:
        return max((r["step"] for r in metrics(Path(run) / "metrics.jsonl")), default=0)
    except FileNotFoundError:
        return 0


def raw_metrics(run: Path, kind: str | None = "train") -> list[dict]:
    """Every line of metrics.jsonl exactly as written, each of which must parse. Only for tests whose point is
    the file itself (each step in it once, nothing left past a resume point, no broken line): ``read_metrics``
    keeps the last record per step and skips broken lines, so it would hide exactly those faults."""
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if kind is None or r["kind"] == kind]


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module: the scripts are not a package, and their tests call into them."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
