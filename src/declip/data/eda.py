"""EDA ("Easy Data Augmentation") for captions, as used by DeCLIP's text self-supervision.

DeCLIP augments each caption once with one EDA operation chosen uniformly from
synonym replacement (one word type), random swap (one swap) and random deletion
(p = 0.1). Random insertion exists but is opt-in through ``ops``.

Differences from the reference implementation, all deliberate:

* Randomness comes only from the ``random.Random`` passed to each call. The
  reference calls ``random.seed(1)`` inside EDA, which makes every data-loader
  worker and every rank produce identical "augmentations"; we never touch the
  global ``random`` module.
* Synonyms come from an offline WordNet 3.0 table shipped in
  ``assets/wordnet_synonyms.tsv.gz`` (built by ``scripts/build_synonym_table.py``)
  instead of NLTK, so no corpus download is needed. Synonym lists and candidate
  words are sorted before the rng picks, so results are reproducible across
  processes (the reference iterates Python sets, whose order varies).
* Empty captions give ``""``; one-word captions survive swap and deletion.
* Insertion skips stopwords and takes a random synonym (the reference takes the
  first one of a set, an arbitrary choice).

The caption itself is NOT cleaned (as in the reference): every operation works on the raw
caption split on whitespace, so case, digits, punctuation and accents survive
("2008 Honda Civic Si for sale - $12,500" stays that, minus one word or with two
words swapped). Only the synonym look-up key is normalised with :func:`clean_caption`
(lower-case, drop apostrophes, letters a-z only): "Cars," is looked up as "cars",
and the stopword test uses the same key. A word type is a raw token: synonym
replacement replaces every token equal to the chosen one. Words whose key is empty
("$12,500", "-") are never replaced. Synonyms are inserted as the table has them
(lower-case letters, possibly several words).
"""

from __future__ import annotations

import gzip
import os
import random
import re
import threading
import zlib
from importlib import resources
import typing
from typing import Iterable, Mapping

from ..config import DEFAULT_EDA_OPS, EdaOp

__all__ = ["EDA", "EDAResourceError", "SynonymTable", "load_stopwords", "clean_caption", "ALL_OPS", "DEFAULT_OPS"]

ALL_OPS: tuple[str, ...] = typing.get_args(EdaOp)  # the op names are defined once, in the config's EdaOp
DEFAULT_OPS = DEFAULT_EDA_OPS
_TABLE_ASSET = "wordnet_synonyms.tsv.gz"
_STOPWORDS_ASSET = "english_stopwords.txt"
_REGENERATE = ("regenerate it with `apt-get install wordnet-base && "
               "python scripts/build_synonym_table.py` (or reinstall declip)")
# WordNet "morphy" detachment rules (noun, verb, adjective), used only when a word is
# not itself a WordNet lemma, to mimic NLTK's wordnet.synsets() lemmatisation.
_DETACH = (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
           ("men", "man"), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""),
           ("ing", "e"), ("ing", ""), ("er", ""), ("er", "e"), ("est", ""), ("est", "e"))
_APOSTROPHES = re.compile("['\u2019]")
_NON_LETTERS = re.compile("[^a-z]+")
# Data-loader workers each build an EDA; the cache makes that a dict lookup.
_CACHE: dict[tuple[str, str], object] = {}
_CACHE_LOCK = threading.Lock()


class EDAResourceError(RuntimeError):
    """A packaged or user-supplied EDA resource (synonym table, stopwords) is missing or broken."""


def clean_caption(text: str) -> str:
    """EDA's normalisation (lower-case, letters a-z and single spaces only); used for look-up keys only."""
    text = _APOSTROPHES.sub("", text.lower())
    return _NON_LETTERS.sub(" ", text).strip()


def _lookup_key(word: str) -> str:
    """The synonym/stopword key of one raw token: "Cars," -> "cars", "don't" -> "dont", "$12,500" -> ""."""
    return _NON_LETTERS.sub("", _APOSTROPHES.sub("", word.lower()))


def _resolve(path, asset: str):
    """Return (opener, cache key): a user path, or the packaged asset via importlib.resources."""
    if path is None:
        source = resources.files(__package__ or "declip.data") / "assets" / asset
        return source, f"<package>/{asset}"
    full = os.path.abspath(os.path.expanduser(os.fspath(path)))
    return full, full


def _read_bytes(source, what: str) -> bytes:
    try:
        if isinstance(source, str):
            with open(source, "rb") as fh:
                return fh.read()
        return source.read_bytes()
    except OSError as exc:  # FileNotFoundError, IsADirectoryError, permissions...
        raise EDAResourceError(f"cannot read the EDA {what} at {source}: {exc}; {_REGENERATE}") from exc


class SynonymTable:
    """WordNet synonym lookup: ``word -> tuple of synonyms`` (sorted, may be multi-word).

    Entries are kept as the raw ``"syn1|syn2"`` strings and split on lookup: that
    keeps ~57k entries at a few MB per worker and makes loading a single pass.
    """

    def __init__(self, entries: Mapping[str, str | Iterable[str]]):
        self._entries = {w: s if isinstance(s, str) else "|".join(s) for w, s in entries.items() if s}

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "SynonymTable":
        """Load (once per process and path) the gzip TSV table; default: the packaged asset."""
        source, key = _resolve(path, _TABLE_ASSET)
        with _CACHE_LOCK:
            table = _CACHE.get(("table", key))
            if table is None:
                table = _CACHE[("table", key)] = cls(cls._parse(source))
        return table

    @staticmethod
    def _parse(source) -> dict[str, str]:
        raw = _read_bytes(source, "synonym table")
        try:
            text = gzip.decompress(raw).decode("utf-8")
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
            raise EDAResourceError(f"the EDA synonym table at {source} is corrupt ({exc}); {_REGENERATE}") from exc
        entries: dict[str, str] = {}
        for lineno, line in enumerate(text.splitlines(), 1):
            word, tab, syns = line.partition("\t")
            if not (tab and word and syns):
                raise EDAResourceError(f"the EDA synonym table at {source} is malformed at line {lineno} "
                                       f"(expected 'word<TAB>syn1|syn2'); {_REGENERATE}")
            entries[word] = syns
        if not entries:
            raise EDAResourceError(f"the EDA synonym table at {source} is empty; {_REGENERATE}")
        return entries

    def synonyms(self, word: str) -> tuple[str, ...]:
        """Synonyms of ``word``; for a non-lemma ("cars") those of its WordNet base forms plus the bases."""
        raw = self._entries.get(word)
        if raw is not None:
            return tuple(raw.split("|"))
        found: set[str] = set()
        for suffix, repl in _DETACH:
            if word.endswith(suffix) and len(word) - len(suffix) + len(repl) >= 2:
                base = word[: len(word) - len(suffix)] + repl
                raw = self._entries.get(base)
                if raw is not None:
                    found.add(base)
                    found.update(raw.split("|"))
        found.discard(word)
        return tuple(sorted(found))

    def __contains__(self, word: object) -> bool:
        return word in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def load_stopwords(path: str | os.PathLike | None = None) -> frozenset[str]:
    """Stopword set (one word per line, ``#`` comments); default: the packaged English list."""
    source, key = _resolve(path, _STOPWORDS_ASSET)
    with _CACHE_LOCK:
        words = _CACHE.get(("stopwords", key))
        if words is None:
            try:
                text = _read_bytes(source, "stopword list").decode("utf-8")
            except UnicodeDecodeError as exc:
                raise EDAResourceError(f"the EDA stopword list at {source} is not UTF-8 ({exc})") from exc
            lines = (line.strip().lower() for line in text.splitlines())
            words = _CACHE[("stopwords", key)] = frozenset(w for w in lines if w and not w.startswith("#"))
    return words


class EDA:
    """One EDA augmentation per call: ``EDA()(caption, rng) -> augmented caption``.

    ``synonyms``/``stopwords`` default to the packaged resources, loaded lazily on
    first use (and not pickled, so spawned workers reload them from their own cache).
    """

    def __init__(self, synonyms: SynonymTable | None = None, stopwords: frozenset | None = None,
                 ops: tuple[str, ...] = DEFAULT_OPS, p_delete: float = 0.1,
                 n_swap: int = 1, n_synonym: int = 1, n_insert: int = 1):
        ops = (ops,) if isinstance(ops, str) else tuple(ops)
        unknown = [op for op in ops if op not in ALL_OPS]
        if unknown or not ops:
            raise ValueError(f"unknown EDA op(s) {unknown!r}; choose a non-empty subset of {ALL_OPS}")
        if not 0.0 <= p_delete <= 1.0:
            raise ValueError(f"p_delete must be in [0, 1], got {p_delete}")
        for name, n in (("n_swap", n_swap), ("n_synonym", n_synonym), ("n_insert", n_insert)):
            if int(n) != n or n < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {n}")
        self.ops, self.p_delete = ops, float(p_delete)
        self.n_swap, self.n_synonym, self.n_insert = int(n_swap), int(n_synonym), int(n_insert)
        self._synonyms, self._stopwords = synonyms, stopwords
        self._default_synonyms = synonyms is None

    @property
    def synonyms(self) -> SynonymTable:
        if self._synonyms is None:
            self._synonyms = SynonymTable.load()
        return self._synonyms

    @property
    def stopwords(self) -> frozenset:
        if self._stopwords is None:
            self._stopwords = load_stopwords()
        return self._stopwords

    def __getstate__(self):
        state = self.__dict__.copy()
        if self._default_synonyms:
            state["_synonyms"] = None  # don't ship megabytes to every worker
        return state

    def __call__(self, caption: str, rng: random.Random) -> str:
        if not isinstance(rng, random.Random):
            raise TypeError("EDA needs an explicit random.Random instance (it never uses the global random module)")
        words = caption.split()
        if not words:
            return ""
        op = rng.choice(self.ops)
        return " ".join(getattr(self, "_" + op)(words, rng))

    def _candidates(self, words: list[str], rng: random.Random) -> list[tuple[str, str]]:
        """Distinct raw tokens whose look-up key is a non-stopword, as (token, key), in a reproducible
        random order."""
        stop = self.stopwords
        cands = sorted({(w, key) for w in words for key in (_lookup_key(w),) if key and key not in stop})
        rng.shuffle(cands)
        return cands

    def _synonym(self, words: list[str], rng: random.Random) -> list[str]:
        """Replace every occurrence of up to ``n_synonym`` word types that have synonyms."""
        table, done = self.synonyms, 0
        for word, key in self._candidates(words, rng):
            if done >= self.n_synonym:
                break
            syns = table.synonyms(key)
            if syns:
                new = rng.choice(syns)
                words = [new if w == word else w for w in words]
                done += 1
        return words

    def _swap(self, words: list[str], rng: random.Random) -> list[str]:
        """Swap two distinct positions, ``n_swap`` times (no-op for one word)."""
        words = list(words)
        if len(words) >= 2:
            for _ in range(self.n_swap):
                i, j = rng.sample(range(len(words)), 2)
                words[i], words[j] = words[j], words[i]
        return words

    def _delete(self, words: list[str], rng: random.Random) -> list[str]:
        """Drop each word with probability ``p_delete``; keep one random word if all go."""
        kept = [w for w in words if rng.random() >= self.p_delete]
        return kept if kept else [rng.choice(words)]

    def _insert(self, words: list[str], rng: random.Random) -> list[str]:
        """``n_insert`` times, insert a synonym of a random non-stopword at a random position."""
        words, table = list(words), self.synonyms
        for _ in range(self.n_insert):
            for _word, key in self._candidates(words, rng):
                syns = table.synonyms(key)
                if syns:
                    words.insert(rng.randint(0, len(words)), rng.choice(syns))
                    break
            else:
                break  # nothing left with a synonym
        return words
