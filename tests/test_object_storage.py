"""Data behind ``s3://`` URLs (issue 39.1), read from a real S3-compatible server on 127.0.0.1 (moto's server,
tests/s3_server.py): the same samples as from disk, indexes cached locally and keyed on the object's ETag,
one-line errors for a missing bucket / object or a denied request, too-large objects refused before the GET,
readahead that changes nothing but the speed, and a training run (with evaluation) that resumes bit-exactly.
"""
import io
import os
import random
import time
import uuid

import numpy as np
import pytest
import torch

from declip import storage
from declip.config import DataConfig
from declip.data import offsets
from declip.data.errors import BadSample
from declip.data.loader import DataSpec, PairDataset
from declip.data.manifest import ManifestSource
from declip.data.shards import ShardSource
from declip.data.sources import build_source
from declip.errors import DataError
from helpers import raw_metrics, write_tiny_config
from s3_server import LocalS3
from test_data_sources import make_pairs, write_csv, write_manifest, write_shards


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("moto", reason="the dev extra's moto[server] runs the local S3 server")
    pytest.importorskip("s3fs", reason="s3:// needs s3fs (declip[s3])")
    with LocalS3() as server:
        yield server


@pytest.fixture
def remote(s3, tmp_path):
    """Local files (images, manifest, CSV, shards) and the same uploaded to a fresh bucket: (tmp, pairs, url)."""
    pairs = make_pairs(tmp_path / "data" / "images")
    write_manifest(tmp_path / "data" / "m.jsonl", pairs)
    write_csv(tmp_path / "data" / "c.tsv", pairs, "\t")
    write_shards(tmp_path / "data" / "shards", pairs)
    url = s3.upload(tmp_path / "data", s3.bucket(f"declip-{uuid.uuid4().hex[:12]}"))
    return tmp_path, pairs, url


def pixels(sample):
    image, caption = sample
    return np.asarray(image).tobytes(), caption


def test_urls_are_told_from_paths_and_joined_as_text():
    assert storage.is_remote("s3://b/k") and storage.is_remote("gs://b/k") and storage.is_remote("HTTPS://h/x")
    assert not storage.is_remote("/data/s3://x") and not storage.is_remote("relative/path")
    assert storage.join("s3://b/images/", "/a/b.jpg") == "s3://b/images/a/b.jpg"
    assert storage.location("s3://b//k") == "s3://b//k" and str(storage.location("a//b")) == "a/b"


def test_every_source_gives_the_same_samples_from_s3_as_from_disk(remote, monkeypatch):
    tmp, pairs, url = remote
    local = ManifestSource(tmp / "data/m.jsonl", tmp / "data/images")
    index_dir = str(tmp / "index")
    sources = {
        "manifest": ManifestSource(f"{url}/m.jsonl", f"{url}/images", index_dir=index_dir),
        "local manifest, s3 root": ManifestSource(tmp / "data/m.jsonl", f"{url}/images"),
        "csv": build_source(DataConfig(source="csv", path=f"{url}/c.tsv", root=f"{url}/images",
                                       index_dir=index_dir)),
        "shards": ShardSource(f"{url}/shards/{{00000..00002}}.tar", index_dir=index_dir),
        "shard folder": ShardSource(f"{url}/shards", index_dir=index_dir),
    }
    for name, src in sources.items():
        assert src.remote and len(src) == len(pairs), name
        for i in range(len(pairs)):
            assert pixels(src.load(i)) == pixels(local.load(i)), (name, i)
    # the indexes are local files keyed on the objects' ETags: a second open reads no object to build them
    assert len(list((tmp / "index").glob("*.idx.npy"))) == 1 + 1 + 3

    def refuse(*_):
        raise AssertionError("the cached index should have been used")

    monkeypatch.setattr("declip.data.manifest.scan_lines", refuse)
    monkeypatch.setattr("declip.data.shards.scan_tar", refuse)
    assert len(ManifestSource(f"{url}/m.jsonl", f"{url}/images", index_dir=index_dir)) == len(pairs)
    assert len(ShardSource(f"{url}/shards", index_dir=index_dir)) == len(pairs)


def test_a_rewritten_object_gets_a_new_index(remote, s3):
    tmp, pairs, url = remote
    index_dir = str(tmp / "index")
    before = storage.identity(f"{url}/m.jsonl")
    assert len(ManifestSource(f"{url}/m.jsonl", f"{url}/images", index_dir=index_dir)) == len(pairs)
    body = (tmp / "data/m.jsonl").read_bytes()
    s3.fs.pipe_file(f"{url}/m.jsonl", body + b'{"filename": "000001.jpg", "caption": "appended"}\n')
    assert storage.identity(f"{url}/m.jsonl") != before
    src = ManifestSource(f"{url}/m.jsonl", f"{url}/images", index_dir=index_dir)
    assert len(src) == len(pairs) + 1 and src.load(len(pairs))[1] == "appended"


def test_missing_bucket_object_and_denied_requests_are_one_line(remote, s3, monkeypatch):
    tmp, pairs, url = remote
    with pytest.raises(DataError, match=r"^manifest: bucket 'no-such-bucket-x' of s3://no-such-bucket-x/m.jsonl "
                                        r"does not exist \(check the URL"):
        ManifestSource("s3://no-such-bucket-x/m.jsonl", f"{url}/images")
    with pytest.raises(DataError, match=r"^data.root: bucket 'no-such-bucket-x' of s3://no-such-bucket-x/img"):
        build_source(DataConfig(source="manifest", path=f"{url}/m.jsonl", root="s3://no-such-bucket-x/img"))
    with pytest.raises(DataError, match=rf"^manifest not found: {url}/gone.jsonl$"):
        ManifestSource(f"{url}/gone.jsonl", f"{url}/images")
    with pytest.raises(DataError, match=r"1 of 4 shards missing, e.g. s3://.*/shards/00003.tar"):
        ShardSource(f"{url}/shards/{{00000..00003}}.tar")

    s3.fs.rm_file(f"{url}/images/{pairs[2][0]}")  # a missing object is a skipped sample, counted
    src = ManifestSource(f"{url}/m.jsonl", f"{url}/images", index_dir=str(tmp / "index"))
    with pytest.raises(BadSample) as e:
        src.load(2)
    assert e.value.reason == "missing_file" and e.value.detail == f"{url}/images/{pairs[2][0]}: no such object"

    fs = storage.filesystem(url)

    def denied(*_, **__):
        raise PermissionError("Access Denied")

    monkeypatch.setattr(fs, "info", denied)  # what s3fs raises for a 403 (AccessDenied)
    with pytest.raises(BadSample) as e:
        src.load(3)
    assert e.value.reason == "missing_file" and "access denied" in e.value.detail and "\n" not in e.value.detail
    with pytest.raises(DataError, match=r"^manifest: s3://.*/m.jsonl: access denied \(Access Denied\); check the "
                                        r"credentials"):
        ManifestSource(f"{url}/m.jsonl", f"{url}/images")


def test_an_object_over_the_byte_cap_is_skipped_before_its_get(remote, monkeypatch):
    tmp, pairs, url = remote
    size = len(pairs[0][2])
    src = ManifestSource(f"{url}/m.jsonl", f"{url}/images", index_dir=str(tmp / "index"), max_bytes=size - 1)
    gets = []
    real = storage.read_range
    monkeypatch.setattr(storage, "read_range", lambda u, a, b: gets.append(u) or real(u, a, b))
    with pytest.raises(BadSample) as e:
        src.load(0)
    assert e.value.reason == "too_large" and "data.max_image_bytes" in e.value.detail
    assert gets == [f"{url}/m.jsonl"]  # the manifest line only: the image's size came from its HEAD
    monkeypatch.setattr("declip.data.shards.TEXT_SLACK", 0)  # a shard sample: its span, from the tar headers
    shards = ShardSource(f"{url}/shards", index_dir=str(tmp / "index"), max_bytes=100)
    gets.clear()
    with pytest.raises(BadSample, match="too_large"):
        shards.load(0)
    assert gets == [] and shards.key(0) == "00000.tar: sample 1"  # named without reading it


def test_readahead_changes_nothing_but_the_waiting(remote):
    tmp, pairs, url = remote
    src = ShardSource(f"{url}/shards", index_dir=str(tmp / "index"))
    items = [(0, i) for i in (3, 0, 7, 11, 5, 2)]
    plain = PairDataset(src, DataSpec(n_views=2), 32, seed=3, readahead=0).__getitems__(items)
    ahead = PairDataset(src, DataSpec(n_views=2), 32, seed=3, readahead=4)
    assert ahead.readahead == 4
    for a, b in zip(plain, ahead.__getitems__(items)):
        assert set(a) == set(b)
        for k in a:
            assert torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k], k


def test_a_slow_object_times_out_like_a_slow_disk(remote):
    tmp, pairs, url = remote
    src = ShardSource(f"{url}/shards", index_dir=str(tmp / "index"))  # indexed at full speed
    with LocalS3(delay_s=0.6):  # the same objects (moto's state is per process), each request 0.6 s late
        ds = PairDataset(src, DataSpec(), 32, seed=0, sample_timeout_s=0.2, readahead=2)
        status, error = ds._fetch(1)  # what the readahead threads run
        time.sleep(1.0)  # the abandoned read returns: no stuck thread is left to count against later tests
    assert status == "bad" and error.reason == "timeout" and "data.sample_timeout_s=0.2" in error.detail


RUN_STEPS = 8


def run_config(tmp, name: str, data: list[str]) -> "Path":
    """The resume test's tiny run (a loader worker process, a checkpoint every 3 steps) on ``data``, evaluated
    (retrieval on the same manifest) at step 6 and at the end."""
    return write_tiny_config(tmp / f"{name}.yaml", *data, "method.name=declip", f"train.steps={RUN_STEPS}",
                             "train.ckpt_every=3", "train.keep_last=20", f"train.output_dir={tmp / name}",
                             "data.num_workers=1", "data.pin_memory=false", "eval.num_workers=0",
                             "eval.builtin=false", "eval.tasks=[retrieval]", "eval.every=6",
                             f"data.index_dir={tmp / 'index'}")


@pytest.mark.slow
@pytest.mark.parametrize("form", ["webdataset", "manifest"])
def test_training_from_s3_equals_disk_and_resumes_bit_exactly(remote, form):
    """Three processes (why it is slow: ~30 s each on a shared 2-core machine): the run on local files; the same
    run on s3:// URLs, SIGKILLed after its first checkpoint and resumed with --resume latest. Every logged loss
    and metric (train and eval) and the final checkpoint must be the local run's, bit for bit: S3 changes where
    the bytes come from, nothing else."""
    from test_resume_exact import TIMING_KEYS, assert_same_state, finish, kill_after, launch

    from declip.train.checkpoint import list_checkpoints, load_checkpoint

    tmp, pairs, url = remote
    data = tmp / "data"
    where = {"local": (str(data), str(data / "images")), "s3": (url, f"{url}/images")}
    cfgs = {}
    for name, (base, images) in where.items():
        path = f"{base}/shards" if form == "webdataset" else f"{base}/m.jsonl"
        cfgs[name] = run_config(tmp, name, [f"data.source={form}", f"data.path={path}", f"data.root={images}",
                                            f"eval.retrieval_manifest={base}/m.jsonl",
                                            f"eval.retrieval_root={images}"])
    reference = launch(cfgs["local"])
    victim = launch(cfgs["s3"])
    # generous timeouts: two training processes and the S3 server share the CPUs (a loaded 2-core machine)
    kill_after(victim, tmp / "s3", random.Random(time.time_ns()).randint(4, RUN_STEPS - 2), timeout=300)
    out = finish(launch(cfgs["s3"], "--resume", "latest"), timeout=300)
    assert "at step 3 " in out or "at step 6 " in out, out[-2000:]
    finish(reference, timeout=300)

    ref_rows, run_rows = raw_metrics(tmp / "local", None), raw_metrics(tmp / "s3", None)
    assert any("retrieval" in k for r in ref_rows for k in r), "evaluation ran"
    assert len(ref_rows) == len(run_rows)
    clock = TIMING_KEYS | {"fps", "fps_steps"}  # the summary's speed (over the resumed part only, there)
    for a, b in zip(ref_rows, run_rows):
        assert {k: v for k, v in a.items() if k not in clock} == {k: v for k, v in b.items() if k not in clock}, \
            (a["kind"], a.get("step"))
    final_ref = load_checkpoint(list_checkpoints(tmp / "local")[-1][1])
    final_run = load_checkpoint(list_checkpoints(tmp / "s3")[-1][1])
    for key in ("model", "optimizer", "data", "rng", "step"):
        assert_same_state(final_ref[key], final_run[key], key)


def test_https_urls_read_through_a_plain_http_server(tmp_path):
    """http(s):// goes through fsspec's HTTP filesystem: a manifest and its images served by Python's own
    http.server (which ignores Range headers: read_range then cuts the range from the whole body)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    pairs = make_pairs(tmp_path / "images")
    write_manifest(tmp_path / "m.jsonl", pairs)
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert storage.read_range(f"{url}/m.jsonl", 2, 12) == (tmp_path / "m.jsonl").read_bytes()[2:12]
        src = ManifestSource(f"{url}/m.jsonl", f"{url}/images", index_dir=str(tmp_path / "index"))
        local = ManifestSource(tmp_path / "m.jsonl", tmp_path / "images")
        assert src.remote and [pixels(src.load(i)) for i in range(3)] == [pixels(local.load(i)) for i in range(3)]
        with pytest.raises(BadSample) as e:
            ManifestSource(f"{url}/m.jsonl", f"{url}/nowhere").load(0)
        assert e.value.reason == "missing_file" and e.value.detail.endswith("no such object")
    finally:
        server.shutdown()
