"""The shipped recipes: every YAML in the package's ``configs/`` folder, addressable by name.

Why package data and not a folder of the clone: a ``pip install``-ed declip has no clone, and the recipes are
where its measured settings live (the small-data recipe, the reference YFCC15M ones). ``--config NAME`` finds
``declip/configs/NAME.yaml``; a path still works and wins when both exist. The repository's ``configs`` is a
link to the same folder, so ``configs/declip_vitb32_yfcc15m.yaml`` keeps working in scripts and docs.

Import-light (no torch): the CLI resolves names and lists recipes before anything heavy loads.
"""
from __future__ import annotations

from pathlib import Path

from .config_parse import parse_override
from .errors import ConfigError

RECIPES_DIR = Path(__file__).parent / "configs"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    return RECIPES_DIR / f"{name}.yaml"


def resolve_config(spec: str | Path) -> Path:
    """A config file path, or a shipped recipe's name (with or without ``.yaml``) -> the file to read."""
    path = Path(spec)
    if path.is_file():
        return path
    name = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if path.parent == Path(".") and recipe_path(name).is_file():
        return recipe_path(name)
    raise ConfigError(f"config not found: {spec} is neither a file nor a shipped recipe "
                      f"(recipes: {', '.join(recipe_names())}; `declip configs` describes them)")


def is_shipped(source: str) -> bool:
    """Whether a config origin (``cfg.origins`` value) is one of the shipped recipe files."""
    try:
        return Path(source).resolve().parent == RECIPES_DIR.resolve() and Path(source).suffix == ".yaml"
    except (OSError, ValueError):
        return False


def summary(path: Path) -> str:
    """A recipe's one-line description: its ``# summary:`` line, else its first comment line."""
    comments = [line.lstrip("#").strip() for line in path.read_text(encoding="utf-8").splitlines()
                if line.startswith("#")]
    for line in comments:
        if line.lower().startswith("summary:"):
            return line.split(":", 1)[1].strip()
    return comments[0] if comments else ""


def describe_recipes() -> str:
    """``declip configs``: one line per shipped recipe."""
    names = recipe_names()
    width = max(map(len, names))
    lines = [f"{name:<{width}}  {summary(recipe_path(name))}" for name in names]
    return "\n".join(lines + ["", f"use one with: declip train --config NAME (files in {RECIPES_DIR})"])


def demo_config_path() -> Path:
    """The built-in demo (DeCLIP, tiny towers, generated data): what ``declip train`` runs without --config."""
    return recipe_path("demo")


def own_data_config_path() -> Path:
    """General defaults for a user's own data (reference heads, queue, context and lr schedule scaled to the
    batch): what ``declip train data.source=...`` runs without --config. The demo's settings are tuned for the
    generated shapes and must not leak into a real run."""
    return recipe_path("own_data")


def default_config_path(overrides: list[str] | tuple[str, ...]) -> Path:
    """The config ``declip train`` starts from when no --config is given: the demo for the built-in data,
    the general defaults as soon as the command line names another data source."""
    sources = [parse_override(o)[1] for o in overrides if o.split("=", 1)[0].strip() == "data.source"]
    return own_data_config_path() if sources and sources[-1] != "builtin" else demo_config_path()
