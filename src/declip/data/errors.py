"""Why a sample is unusable: the leaf every data source and the loader import (no circle through sources.py)."""
from __future__ import annotations

from pathlib import Path

from .. import storage
from ..errors import DataError

# The one list of reasons a sample is skipped (file sources raise them via declip.data.decode):
#   missing_file      image file (or a shard's image member, or a remote object) absent, denied or unreadable
#   empty_file        zero bytes
#   corrupt_image     not decodable: unknown format, truncated, garbage, absurd size
#   empty_caption     caption empty or whitespace only
#   non_latin_caption no Latin letter at all (CJK-only, emoji, digits): unusable for the CLIP BPE + English EDA
#   bad_line          record unparseable: malformed JSON / CSV row, missing key, wrong type
#   timeout           not read and decoded within data.sample_timeout_s (a slow or hung file system)
#   not_a_file        a FIFO, socket or device in place of an image (reading it could block forever)
#   outside_root      a filename that is absolute or climbs out of the root with '..' (data.allow_outside_root)
#   too_large         more pixels than data.max_image_pixels (judged from the header before any decoding), or
#                     more bytes than data.max_image_bytes (judged from the file's / object's / tar member's size
#                     before any read)
# New reasons go at the end: a checkpoint stores the counts by position (older, shorter ones are padded).
SKIP_REASONS = (
    "missing_file", "empty_file", "corrupt_image", "empty_caption", "non_latin_caption", "bad_line",
    "timeout", "not_a_file", "outside_root", "too_large",
)


class DataStallError(DataError):
    """Reads that never return (a hung network mount): skipping more samples would only pile up stuck threads."""


class BadSample(Exception):
    def __init__(self, reason: str, detail: str = ""):
        assert reason in SKIP_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def require_file(path, what: str) -> None:
    """A data file the run cannot start without: a clear one-line :class:`DataError` if it is not a file (for a
    URL: no such bucket or object, access denied)."""
    if storage.is_remote(path):
        storage.require_object(str(path), what)
        return
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")


def require_dir(path, what: str) -> None:
    """A folder the run reads from (an image root): a URL root needs its bucket to exist and answer (an object
    store has no folders to check)."""
    if storage.is_remote(path):
        storage.require_bucket(str(path), what)
        return
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{what} {path} is not a folder" if path.exists() else f"{what} not found: {path}")
