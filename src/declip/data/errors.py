"""Why a sample is unusable: the leaf every data source and the loader import (no circle through sources.py)."""
from __future__ import annotations

# The one list of reasons a sample is skipped (file sources raise them via declip.data.decode):
#   missing_file      image file (or a shard's image member) absent or unreadable
#   empty_file        zero bytes
#   corrupt_image     not decodable: unknown format, truncated, garbage, absurd size
#   empty_caption     caption empty or whitespace only
#   non_latin_caption no Latin letter at all (CJK-only, emoji, digits): unusable for the CLIP BPE + English EDA
#   bad_line          record unparseable: malformed JSON / CSV row, missing key, wrong type
SKIP_REASONS = (
    "missing_file", "empty_file", "corrupt_image", "empty_caption", "non_latin_caption", "bad_line",
)


class BadSample(Exception):
    def __init__(self, reason: str, detail: str = ""):
        assert reason in SKIP_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail
