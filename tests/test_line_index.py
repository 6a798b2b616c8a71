"""The manifest's cached line index (issue 38.4): it used to be keyed on size + mtime only, so a same-size edit
with the mtime put back was read through the stale index (a line cut in two, two lines glued). Now the key holds
a digest of the content (all of a small file; head, tail and sampled blocks of a large one), and every line read
checks its own boundaries, so an edit the sampled digest misses is still never misread."""
import json
import os

import numpy as np

from declip.data import offsets
from declip.data.manifest import ManifestSource


def write(path, captions):
    path.write_text("".join(json.dumps({"filename": f"{i}.jpg", "caption": c}) + "\n" for i, c in enumerate(captions)))


def same_size_edit(path, captions):
    """Rewrite ``path`` with ``captions`` (the same total size, other line boundaries), mtime put back."""
    st = path.stat()
    write(path, captions)
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def captions_of(src):
    return [src.record(i)["caption"] for i in range(len(src))]


BEFORE = ["a cat", "a long dog", "x" * 40, "a bird", "the end"]
AFTER = ["a cat, one", "a dog", "x" * 40, "a bird", "the end"]  # lines 1-2 moved their shared boundary


def test_a_same_size_edit_with_the_mtime_restored_gets_a_new_index(tmp_path):
    path = tmp_path / "m.jsonl"
    write(path, BEFORE)
    assert captions_of(ManifestSource(path, tmp_path)) == BEFORE
    same_size_edit(path, AFTER)
    assert captions_of(ManifestSource(path, tmp_path)) == AFTER  # size + mtime alike, the content key is not


def test_an_edit_the_sampled_digest_misses_is_caught_at_the_line(tmp_path, monkeypatch):
    """A large file is keyed on sampled blocks only: shrink 'large' to a few bytes so the edit falls between
    them. The stale index is then loaded, and the boundary check of the first line it would misread rebuilds it."""
    monkeypatch.setattr(offsets, "WHOLE", 0)
    monkeypatch.setattr(offsets, "BLOCK", 8)
    monkeypatch.setattr(offsets, "BLOCKS", 2)  # the first and the last 8 bytes: the edit is in between
    path = tmp_path / "m.jsonl"
    write(path, BEFORE)
    cache = tmp_path / "m.jsonl.lines.idx.npy"
    ManifestSource(path, tmp_path)
    old = np.load(cache)
    same_size_edit(path, AFTER)
    src = ManifestSource(path, tmp_path)
    assert np.array_equal(np.asarray(src.starts), old[offsets.HEADER:])  # stale: its key matched
    assert captions_of(src) == AFTER  # yet line 1 is read whole, after the index was rebuilt at it
    assert not np.array_equal(np.load(cache), old)  # and the cache on disk is the new one
    assert captions_of(ManifestSource(path, tmp_path)) == AFTER


def test_an_edit_that_moves_no_boundary_reads_the_new_text_through_the_old_index(tmp_path, monkeypatch):
    monkeypatch.setattr(offsets, "WHOLE", 0)
    monkeypatch.setattr(offsets, "BLOCK", 8)
    monkeypatch.setattr(offsets, "BLOCKS", 2)
    path = tmp_path / "m.jsonl"
    write(path, BEFORE)
    ManifestSource(path, tmp_path)
    edited = ["a cow", "a long hog", *BEFORE[2:]]  # same lengths line by line
    same_size_edit(path, edited)
    assert captions_of(ManifestSource(path, tmp_path)) == edited  # the offsets are still right: nothing misread
