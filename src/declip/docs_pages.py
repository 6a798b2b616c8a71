"""``declip docs [TOPIC]``: the documentation pages, read from the installed package.

Why in the package: a ``pip install``-ed declip has no clone, and no public web page hosts these docs; the
pages it would need (data formats, recipes, troubleshooting) ship with it. ``declip/docs`` in the source tree
is a link to the repository's ``docs/`` folder, so the pages exist once in git and the wheel carries copies.
Import-light (no torch).
"""
from __future__ import annotations

from pathlib import Path

from .errors import DeclipError

DOCS_DIR = Path(__file__).parent / "docs"
PROJECT_README = Path(__file__).parent / "README.md"  # the project README (a link to it in the source tree)
INDEX = "README"


def topics() -> list[str]:
    """The pages by topic name (``data-formats``, ``evaluation``, ...), the index excluded; ``readme`` is the
    project README (Quick start, install, the own-data walkthrough)."""
    return sorted(["readme", *(p.stem for p in DOCS_DIR.glob("*.md") if p.stem != INDEX)])


def page_path(topic: str | None) -> Path:
    """The file of a topic (``data-formats`` or ``data-formats.md``); None or ``index`` is the index page."""
    name = INDEX if topic in (None, "", "index") else topic.removesuffix(".md")
    path = PROJECT_README if name.lower() == "readme" else DOCS_DIR / f"{name}.md"
    if not path.is_file():
        raise DeclipError(f"no docs page {topic!r}: the topics are {', '.join(topics())} "
                          f"(`declip docs` prints the index)")
    return path


def read_page(topic: str | None = None) -> str:
    """A page's text; the index page is followed by the command that opens each topic."""
    text = page_path(topic).read_text(encoding="utf-8")
    if topic in (None, "", "index"):
        text += f"\nOpen a page with: declip docs TOPIC ({', '.join(topics())}); the files are in {DOCS_DIR}\n"
    return text
