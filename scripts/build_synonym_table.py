#!/usr/bin/env python3
"""Build the offline WordNet synonym table used by ``declip.data.eda``.

Why this exists: the DeCLIP reference EDA asks NLTK's WordNet corpus for
synonyms at run time, which needs a network download on every new machine and
is slow inside data-loader workers. We instead precompute one small, sorted,
gzip-compressed TSV from the Debian/Ubuntu ``wordnet-base`` package (WordNet
3.0) and ship it inside the package.

Usage::

    apt-get install wordnet-base
    python scripts/build_synonym_table.py \
        [--wordnet-dir /usr/share/wordnet] \
        [--out src/declip/data/assets/wordnet_synonyms.tsv.gz]

Rules (kept in step with the docstring of ``declip.data.eda``):

* The ``data.{noun,verb,adj,adv}`` files are parsed directly. Licence header
  lines start with two spaces; every other line is
  ``offset lex_filenum ss_type w_cnt(2 hex digits) word lex_id [word lex_id ...] ...``.
* A lemma is normalised like EDA does it: ``_`` and ``-`` become spaces,
  adjective markers ``(a)``, ``(p)``, ``(ip)`` are dropped, the text is
  lower-cased, every character other than ``a-z`` and space is removed, and
  runs of spaces are collapsed.
* Keys are only normalised lemmas that are a single word of letters (captions
  are tokenised on spaces, so multi-word keys could never be looked up).
* The synonyms of a key are the normalised other lemmas of every synset, of
  any part of speech, that contains the key; the key itself and empty strings
  are removed, duplicates are dropped and the list is **sorted** (so the order
  does not depend on WordNet's file offsets). Synonyms may be multi-word
  ("motor vehicle"). Keys without any synonym are omitted.
* Output: one ``word<TAB>syn1|syn2|...`` line per key, sorted by key, UTF-8,
  gzip level 9 with mtime 0 and no file name, so that the bytes are
  reproducible.
"""

from __future__ import annotations

import argparse
import gzip
import io
import re
import sys
from collections import defaultdict
from pathlib import Path

POS_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
_NON_LETTER = re.compile(r"[^a-z ]+")
_SPACES = re.compile(r" +")
_SINGLE_WORD = re.compile(r"[a-z]+")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "src/declip/data/assets/wordnet_synonyms.tsv.gz"


def normalise_lemma(raw: str) -> str:
    """Turn a WordNet lemma such as ``St._John's_wort`` into ``st johns wort``."""
    text = _ADJ_MARKER.sub("", raw).replace("_", " ").replace("-", " ").lower()
    text = _NON_LETTER.sub("", text)
    return _SPACES.sub(" ", text).strip()


def iter_synsets(path: Path):
    """Yield the list of normalised lemmas of every synset in one data file."""
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith("  "):  # licence header
                continue
            fields = line.split(" ")
            try:
                count = int(fields[3], 16)
                raw_words = fields[4 : 4 + 2 * count : 2]
            except (IndexError, ValueError) as exc:
                raise SystemExit(f"{path}:{lineno}: cannot parse synset line ({exc})")
            if len(raw_words) != count:
                raise SystemExit(f"{path}:{lineno}: truncated synset line")
            yield [normalise_lemma(w) for w in raw_words]


def build_table(wordnet_dir: Path) -> dict[str, list[str]]:
    """Map every single-word lemma to its sorted synonym list."""
    synonyms: dict[str, set[str]] = defaultdict(set)
    for name in POS_FILES:
        for lemmas in iter_synsets(wordnet_dir / name):
            lemmas = [lemma for lemma in lemmas if lemma]
            for key in lemmas:
                if _SINGLE_WORD.fullmatch(key):
                    synonyms[key].update(lemma for lemma in lemmas if lemma != key)
    return {key: sorted(syns) for key, syns in sorted(synonyms.items()) if syns}


def serialise(table: dict[str, list[str]]) -> bytes:
    """Deterministic gzip TSV bytes (mtime 0, no embedded file name)."""
    text = "".join(f"{key}\t{'|'.join(syns)}\n" for key, syns in table.items())
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buf, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    missing = [n for n in POS_FILES if not (args.wordnet_dir / n).is_file()]
    if missing:
        print(
            f"error: WordNet 3.0 database not found in {args.wordnet_dir} (missing {', '.join(missing)}).\n"
            "Install it with: apt-get install wordnet-base  (or pass --wordnet-dir DIR)",
            file=sys.stderr,
        )
        return 2

    table = build_table(args.wordnet_dir)
    data = serialise(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    n_syn = sum(len(v) for v in table.values())
    print(f"wrote {args.out}: {len(table)} words, {n_syn} synonym entries, {len(data) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
