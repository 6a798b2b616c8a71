"""Bounded reads (issue 39.3): an image file over ``data.max_image_bytes`` is skipped as ``too_large`` from its
size, before any byte is read, in training (manifest, CSV, shards), evaluation, ``data check`` and ``data shard``.

The files are 2 GB sparse files (``truncate``: no disk used); what is measured is the memory of a fresh process
reading them (its peak RSS growth, ``resource.getrusage``) and Python's own allocations (``tracemalloc``): both
must stay far below 2 GB. The remote object case is in tests/test_object_storage.py.
"""
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from PIL import Image

SRC = str(Path(__file__).resolve().parents[1] / "src")
HUGE = 2 * 2**30  # 2 GB, sparse
LIMIT = 64 * 2**20  # far below it: what a bounded read may cost at most (the default cap)


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def sparse_shard(path: Path) -> None:
    """A tar whose first sample's image member claims (and holds, sparsely) 2 GB, then a normal sample."""
    with open(path, "wb") as f:
        info = tarfile.TarInfo("000000.jpg")
        info.size = HUGE
        f.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        f.seek(HUGE, os.SEEK_CUR)  # the member's data: a hole
        tail = io.BytesIO()
        with tarfile.open(fileobj=tail, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            for name, data in (("000000.txt", b"a huge picture"), ("000001.png", png()), ("000001.txt", b"a dot")):
                member = tarfile.TarInfo(name)
                member.size = len(data)
                tf.addfile(member, io.BytesIO(data))
        f.write(tail.getvalue())


SCRIPT = """
import json, resource, sys, tracemalloc
from declip.data.decode import read_image_bytes
from declip.data.errors import BadSample
from declip.data.manifest import ManifestSource
from declip.data.shards import ShardSource
from declip.data.tools import check_manifest, shard_manifest
from declip.eval.common import FileImages
import io, tqdm, webdataset, declip.data.labelled, declip.data.tokenizer  # imported before tracemalloc counts

tmp = sys.argv[1]
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
tracemalloc.start()
seen = {}
def reason(fn):
    try:
        fn()
    except BadSample as e:
        return e.reason, e.detail
    return "read", ""
seen["file"] = reason(lambda: read_image_bytes(f"{tmp}/images/huge.jpg"))
src = ManifestSource(f"{tmp}/m.jsonl", f"{tmp}/images")
seen["manifest"] = reason(lambda: src.load(0))
seen["manifest_ok"] = reason(lambda: src.load(1))
shards = ShardSource(f"{tmp}/huge.tar")
seen["shard"] = reason(lambda: shards.load(0))
seen["shard_ok"] = reason(lambda: shards.load(1))
seen["eval"] = reason(lambda: FileImages(f"{tmp}/images", ["huge.jpg"], 32)(0))
out = io.StringIO()
seen["check"] = check_manifest(f"{tmp}/m.jsonl", f"{tmp}/images", threads=2, progress=False, out=out)["problems"]
seen["shard_cmd"] = shard_manifest(f"{tmp}/m.jsonl", f"{tmp}/images", f"{tmp}/out", threads=2, progress=False,
                                   out=out)["skipped"]
peak = tracemalloc.get_traced_memory()[1]
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seen": seen, "traced_peak": peak, "rss_growth": rss1 - rss0}))
"""


def test_a_2gb_sparse_file_is_skipped_as_too_large_without_being_read(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    with open(images / "huge.jpg", "wb") as f:
        f.truncate(HUGE)
    (images / "ok.png").write_bytes(png())
    (tmp_path / "m.jsonl").write_text(json.dumps({"filename": "huge.jpg", "caption": "a huge picture"}) + "\n" +
                                      json.dumps({"filename": "ok.png", "caption": "a red dot"}) + "\n")
    sparse_shard(tmp_path / "huge.tar")
    assert os.stat(images / "huge.jpg").st_blocks * 512 < 2**20  # sparse indeed: the test costs no disk

    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    seen = result["seen"]
    for case in ("file", "manifest", "shard", "eval"):
        assert seen[case][0] == "too_large", (case, seen[case])
    assert "2048.0 MiB > data.max_image_bytes=67108864" in seen["file"][1]
    assert seen["manifest_ok"][0] == seen["shard_ok"][0] == "read"
    assert seen["check"] == {"too_large": 1} and seen["shard_cmd"] == {"too_large": 1}
    assert result["traced_peak"] < LIMIT, result
    assert result["rss_growth"] < LIMIT, result  # reading 2 GB would need 2 GB


def test_the_new_data_keys_are_checked_before_training():
    import pytest

    from declip.config import load_config
    from declip.errors import ConfigError

    for item, key in (("data.max_image_bytes=0", "data.max_image_bytes"), ("data.readahead=-1", "data.readahead")):
        with pytest.raises(ConfigError, match=key) as e:
            load_config(None, [item])
        assert "\n" not in str(e.value)
    assert load_config(None, ["data.readahead=0"]).data.readahead == 0
