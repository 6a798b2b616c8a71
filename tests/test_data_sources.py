"""File-backed sources: the same pairs as a manifest, a CSV/TSV and webdataset shards give identical samples;
offset indexes are cached, invalidated and relocated correctly; JPEGs decode in draft mode."""
import csv
import io
import json
import os
import pickle

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from declip.config import DataConfig
from declip.data import offsets
from declip.data.builtin import BuiltinPairs
from declip.data.csv_source import CsvSource
from declip.data.decode import decode_image
from declip.data.manifest import ManifestSource
from declip.data.shards import ShardSource, expand_shards
from declip.data.errors import BadSample
from declip.errors import DataError
from declip.data.sources import build_source

CAPTIONS = [
    "a red bus on a bridge", 'a caption with "quotes", a comma\tand a tab', "line one\nline two of a caption",
    "café crème on a table", "  leading and trailing spaces  ", "a dog", "Ünïcödé letters and 中文 mixed",
    "a very long caption " * 30, "x", "a tree", "two cats", "the end",
]


def make_pairs(root, n=len(CAPTIONS)):
    """n (filename, caption, image bytes): 64x48 JPEGs of smooth random colour, one PNG."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(n):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((64, 48), Image.BICUBIC)
        fmt, ext = ("PNG", "png") if i == 5 else ("JPEG", "jpg")
        buf = io.BytesIO()
        img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        name = f"{i:06d}.{ext}"
        (root / name).write_bytes(buf.getvalue())
        pairs.append((name, CAPTIONS[i % len(CAPTIONS)], buf.getvalue()))
    return pairs


def write_manifest(path, pairs):
    with open(path, "w") as f:
        for i, (name, cap, _) in enumerate(pairs):
            rec = {"filename": name, "caption": [cap, "second caption ignored"] if i % 3 == 0 else cap,
                   "url": f"http://x/{i}", "label": i}
            f.write(json.dumps(rec, ensure_ascii=i % 2 == 0) + "\n")


def write_csv(path, pairs, sep):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=sep)
        w.writerow(["title", "other", "filepath"])
        for name, cap, _ in pairs:
            w.writerow([cap, "-", name])


def write_shards(folder, pairs, per_shard=5):
    folder.mkdir()
    for s in range(0, len(pairs), per_shard):
        with wds.TarWriter(str(folder / f"{s // per_shard:05d}.tar")) as tw:
            for name, cap, data in pairs[s : s + per_shard]:
                key, ext = name.split(".")
                sample = {"__key__": key, ext: data}
                if s == 0:  # first shard: caption in key.txt and key.json; others: key.json only (list form)
                    sample["txt"] = cap
                    sample["json"] = json.dumps({"caption": cap}).encode()
                else:
                    sample["json"] = json.dumps({"caption": [cap], "key": key}).encode()
                tw.write(sample)


@pytest.fixture
def dataset_files(tmp_path):
    pairs = make_pairs(tmp_path / "images")
    write_manifest(tmp_path / "m.jsonl", pairs)
    write_csv(tmp_path / "c.tsv", pairs, "\t")
    write_csv(tmp_path / "c.csv", pairs, ",")
    write_shards(tmp_path / "shards", pairs)
    return tmp_path, pairs


def test_every_source_gives_the_same_samples(dataset_files):
    tmp, pairs = dataset_files
    n = len(pairs)
    sources = {
        "manifest": build_source(DataConfig(source="manifest", path=str(tmp / "m.jsonl"), root=str(tmp / "images"))),
        "tsv": build_source(DataConfig(source="csv", path=str(tmp / "c.tsv"), root=str(tmp / "images"))),
        "csv": build_source(DataConfig(source="csv", path=str(tmp / "c.csv"), root=str(tmp / "images"),
                                       csv_separator=",")),
        "shards-brace": build_source(DataConfig(source="webdataset", path=str(tmp / "shards/{00000..00002}.tar"))),
        "shards-dir": build_source(DataConfig(source="webdataset", path=str(tmp / "shards"))),
    }
    assert {k: len(s) for k, s in sources.items()} == {k: n for k in sources}
    for i, (name, cap, data) in enumerate(pairs):
        want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        for kind, src in sources.items():
            img, caption = src.load(i)
            assert caption == cap.strip(), (kind, i)
            assert img.mode == "RGB" and np.array_equal(np.asarray(img), want), (kind, i)
        assert sources["shards-dir"].key(i).endswith(name.split(".")[0])
    assert sources["manifest"].key(3) == "m.jsonl:4"
    assert sources["tsv"].key(0) == "c.tsv: row 1"  # a quoted caption spans lines: rows, not line numbers


def test_shard_source_matches_the_webdataset_reader(dataset_files):
    tmp, pairs = dataset_files
    pattern = str(tmp / "shards/{00000..00002}.tar")
    src = ShardSource(pattern)
    streamed = list(wds.WebDataset(pattern, shardshuffle=False, empty_check=False))
    assert len(streamed) == len(src) == len(pairs)
    for i, sample in enumerate(streamed):
        key, files = src.members(i)
        assert key == sample["__key__"]
        assert {e: b for e, b in files.items()} == {k: v for k, v in sample.items() if not k.startswith("__")}


def test_builtin_is_a_source_like_the_others():
    src = build_source(DataConfig(source="builtin", builtin_size=7))
    assert isinstance(src, BuiltinPairs) and len(src) == 7
    img, cap = src.load(6)
    assert img.mode == "RGB" and cap and src.key(6) == "builtin-00000006"


def test_manifest_lines_blank_crlf_no_final_newline(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    raw = (b'{"filename": "a.jpg", "caption": "one"}\r\n\r\n'
           b'{"filename": "a.jpg", "caption": "three"}\n{"caption": "four"}\n'
           b'{"filename": "a.jpg", "caption": ["five", "x"]}')
    (tmp_path / "m.jsonl").write_bytes(raw)
    src = ManifestSource(tmp_path / "m.jsonl", tmp_path)
    assert len(src) == 5
    assert src.record(0)["caption"] == "one" and src.record(4)["caption"] == "five"
    with pytest.raises(BadSample, match=r"m.jsonl:2: empty line") as e:
        src.record(1)
    assert e.value.reason == "bad_line"
    with pytest.raises(BadSample, match=r"m.jsonl:4: missing key 'filename'"):
        src.record(3)
    with pytest.raises(IndexError):
        src.line(5)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):  # a run on nothing stops at start, in one line
        ManifestSource(empty, tmp_path)


def test_line_scan_across_chunk_boundaries(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    lines = [b"x" * int(k) for k in rng.integers(0, 20, 300)]
    for ending in (b"", b"\n"):
        p = tmp_path / f"f{len(ending)}.txt"
        p.write_bytes(b"\n".join(lines) + ending)
        monkeypatch.setattr(offsets, "CHUNK", 7)
        starts = np.concatenate(list(offsets.scan_lines(p)))
        want = np.cumsum([0] + [len(x) + 1 for x in lines])
        want[-1] = p.stat().st_size
        assert np.array_equal(starts, want)


def test_index_is_cached_beside_the_file_and_rebuilt_on_change(dataset_files, monkeypatch):
    tmp, pairs = dataset_files
    path = tmp / "m.jsonl"
    ManifestSource(path, tmp / "images")
    cache = tmp / "m.jsonl.lines.idx.npy"
    assert cache.is_file()

    def refuse(_):
        raise AssertionError("the cached index should have been used")

    monkeypatch.setattr("declip.data.manifest.scan_lines", refuse)
    assert len(ManifestSource(path, tmp / "images")) == len(pairs)
    monkeypatch.undo()
    with open(path, "a") as f:
        f.write(json.dumps({"filename": pairs[0][0], "caption": "appended"}) + "\n")
    src = ManifestSource(path, tmp / "images")
    assert len(src) == len(pairs) + 1 and src.load(len(pairs))[1] == "appended"


@pytest.mark.parametrize("damage", ["empty", "truncated", "not npy"])
def test_an_unreadable_index_cache_is_rebuilt_not_fatal(dataset_files, damage):
    """An empty .npy makes np.load raise EOFError, not the OSError / ValueError of other damage: every kind is
    a cache miss (the suspected cause of an intermittent failure inside np.load while a ShardSource re-opened
    its shard indexes after unpickling)."""
    tmp, pairs = dataset_files
    ManifestSource(tmp / "m.jsonl", tmp / "images")
    cache = tmp / "m.jsonl.lines.idx.npy"
    whole = cache.read_bytes()
    cache.write_bytes({"empty": b"", "truncated": whole[: len(whole) // 2], "not npy": b"garbage" * 40}[damage])
    src = ManifestSource(tmp / "m.jsonl", tmp / "images")
    assert len(src) == len(pairs) and src.load(3)[1] == pairs[3][1].strip()
    assert cache.read_bytes() == whole  # rebuilt in place, identical


def test_index_falls_back_to_a_cache_dir_when_the_folder_is_read_only(dataset_files, monkeypatch, tmp_path_factory):
    tmp, pairs = dataset_files
    elsewhere = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("DECLIP_INDEX_DIR", str(elsewhere))
    real_write = offsets._write

    def write(cache, *a):
        if cache.parent == tmp:  # the manifest's own folder refuses writes (root ignores chmod, so simulate)
            raise PermissionError(13, "Permission denied")
        return real_write(cache, *a)

    monkeypatch.setattr(offsets, "_write", write)
    src = ManifestSource(tmp / "m.jsonl", tmp / "images")
    assert len(src) == len(pairs) and not (tmp / "m.jsonl.lines.idx.npy").exists()
    assert [p.name.endswith("-m.jsonl.lines.idx.npy") for p in elsewhere.iterdir()] == [True]
    assert src.load(2)[1] == pairs[2][1]


def test_sources_pickle_without_their_index(dataset_files):
    tmp, pairs = dataset_files
    for src in (ManifestSource(tmp / "m.jsonl", tmp / "images"), CsvSource(tmp / "c.tsv", tmp / "images"),
                ShardSource(str(tmp / "shards"))):
        blob = pickle.dumps(src)
        assert b"idx.npy" not in blob and len(blob) < 2000
        again = pickle.loads(blob)
        assert again.load(4)[1] == src.load(4)[1] == pairs[4][1].strip()


def test_clear_errors_for_bad_csv_header_and_missing_shards(dataset_files):
    tmp, _ = dataset_files
    with pytest.raises(DataError, match=r"no column 'path' \(data.csv_image_key\).*csv_separator=','"):
        CsvSource(tmp / "c.tsv", tmp / "images", image_key="path", separator=",")
    with pytest.raises(DataError, match=r"1 of 4 shards missing, e.g. .*00003.tar"):
        expand_shards(str(tmp / "shards/{00000..00003}.tar"))
    with pytest.raises(DataError, match="manifest not found"):
        ManifestSource(tmp / "nope.jsonl", tmp)


def test_large_jpegs_decode_in_draft_mode():
    buf = io.BytesIO()
    Image.new("RGB", (1024, 768), (200, 30, 40)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    assert decode_image(data, "big", target=None).size == (1024, 768)
    assert decode_image(data, "big", target=64).size == (256, 192)  # 1/4 scale: both sides still >= 128
    assert decode_image(data, "big", target=192).size == (512, 384)  # 1/2 scale: both sides >= 384
    assert decode_image(data, "big", target=224).size == (1024, 768)  # 1/2 would give 384 < 448
    img = decode_image(data, "big", max_side=100)
    assert img.size == (100, 75) and img.mode == "RGB"


def _vm(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc peak-RSS reset")
def test_manifest_streams_in_bounded_memory(tmp_path):
    """20k lines, loose bound (benchmarks/manifest_memory.py measures 1M lines): no per-line Python objects."""
    path = tmp_path / "m.jsonl"
    with open(path, "w") as f:
        for i in range(20_000):
            f.write(json.dumps({"filename": f"{i:08d}.jpg", "caption": f"caption number {i} " * 8,
                                "url": f"http://example.com/{i}.jpg"}) + "\n")
    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak (VmHWM) restarts from the current RSS
        return _vm("VmRSS")

    base = reset_peak()
    src = ManifestSource(path, tmp_path)
    build = _vm("VmHWM") - base  # bounded by the 8 MiB read chunk, not by the file
    base = reset_peak()
    for i in range(len(src)):
        src.record(i)
    stream = _vm("VmHWM") - base  # the index is 160 kB; a list of the 20k parsed dicts would be ~15 MiB
    assert len(src) == 20_000
    assert build < 30 and stream < 4, (build, stream)
