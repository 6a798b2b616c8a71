"""``declip data check`` and ``declip data shard`` on clean and corrupt manifests."""
import io
import json

import numpy as np
import webdataset as wds
from PIL import Image
from test_data_bad import corrupt_fixture
from test_data_sources import make_pairs, write_manifest

from declip.cli import main
from declip.data.manifest import ManifestSource
from declip.data.shards import ShardSource
from declip.data.tools import check_manifest


def test_check_clean_manifest_exits_0(tmp_path, capsys):
    pairs = make_pairs(tmp_path / "images")
    write_manifest(tmp_path / "m.jsonl", pairs)
    rc = main(["data", "check", str(tmp_path / "m.jsonl"), "--root", str(tmp_path / "images"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"ok: {len(pairs)}" in out and "problems" not in out
    assert "note: 1 captions exceed 75 BPE tokens" in out  # the 120-word caption: reported, not a problem


def test_check_reports_counts_and_examples_and_exits_1(tmp_path, capsys):
    manifest, reasons = corrupt_fixture(tmp_path / "images")
    report = check_manifest(str(manifest), str(tmp_path / "images"), threads=3, progress=False)
    assert report["problems"] == {"missing_file": 1, "empty_file": 1, "corrupt_image": 2, "empty_caption": 2,
                                  "non_latin_caption": 1, "bad_line": 2}
    assert report["ok"] == reasons.count(None) == 7
    assert report["examples"]["corrupt_image"][0].startswith(f"{manifest}:4: ")  # truncated.jpg is line 4
    assert report["examples"]["bad_line"] == [f"{manifest}:12: invalid JSON: Unterminated string starting at "
                                              "(column 37)", f"{manifest}:14: missing key 'caption'"]
    assert report["examples"]["empty_caption"] == [f"{manifest}:10: caption is empty",
                                                   f"{manifest}:16: empty caption list"]
    capsys.readouterr()
    rc = main(["data", "check", str(manifest), "--root", str(tmp_path / "images"), "--no-progress",
               "--examples", "1"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "problems: 9 (56.25%)" in out and "  corrupt_image: 2\n" in out
    assert f"    {manifest}:2: {tmp_path / 'images' / 'missing.jpg'}" in out
    assert out.count(f"{manifest}:") == 6  # one example for each of the six reasons
    assert main(["data", "check", str(tmp_path / "absent.jsonl"), "--root", ".", "--no-progress"]) == 2


def test_shard_writes_resized_webdataset_shards_and_skips_bad_samples(tmp_path, capsys):
    manifest, reasons = corrupt_fixture(tmp_path / "images")
    Image.new("RGB", (300, 200), (10, 200, 30)).save(tmp_path / "images" / "big.jpg", quality=90)
    with open(manifest, "a") as f:
        f.write(json.dumps({"filename": "big.jpg", "caption": "a big green field", "url": "http://x/big"}) + "\n")
    out = tmp_path / "shards"
    rc = main(["data", "shard", str(manifest), "--root", str(tmp_path / "images"), "--out", str(out),
               "--max-side", "32", "--shard-size", "3", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0
    good = [i for i, r in enumerate(reasons + [None]) if r is None]  # 8 usable lines
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert f"data.path='{out}/{{00000..00002}}.tar'" in printed and "skipped 9: " in printed
    stats = json.loads((out / "shard_stats.json").read_text())
    assert stats["samples"] == 8 and stats["skipped"]["corrupt_image"] == 2 and stats["skipped"]["bad_line"] == 2

    samples = list(wds.WebDataset(str(out / "{00000..00002}.tar"), shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in good]  # key = manifest line index
    src = ManifestSource(manifest, tmp_path / "images")
    for s, i in zip(samples, good):
        meta = json.loads(s["json"])
        assert s["txt"].decode() == meta["caption"] == src.record(i)["caption"]
        img = Image.open(io.BytesIO(s["jpg"]))
        assert img.format == "JPEG" and img.mode == "RGB" and max(img.size) <= 32
        assert (meta["width"], meta["height"]) == img.size
    big = json.loads(samples[-1]["json"])
    assert (big["original_width"], big["width"], big["height"], big["url"]) == (300, 32, 21, "http://x/big")
    assert np.abs(np.asarray(Image.open(io.BytesIO(samples[-1]["jpg"]))).astype(int) - (10, 200, 30)).max() < 8


def test_shard_copies_fitting_jpegs_unchanged(tmp_path):
    pairs = make_pairs(tmp_path / "images")
    write_manifest(tmp_path / "m.jsonl", pairs)
    out = tmp_path / "shards"
    assert main(["data", "shard", str(tmp_path / "m.jsonl"), "--root", str(tmp_path / "images"), "--out",
                 str(out), "--max-side", "64", "--shard-size", "5", "--no-progress"]) == 0
    shards = ShardSource(str(out))
    manifest = ManifestSource(tmp_path / "m.jsonl", tmp_path / "images")
    assert len(shards) == len(pairs)
    for i, (name, cap, data) in enumerate(pairs):
        key, files = shards.members(i)
        if name.endswith(".jpg"):  # already fits: the original bytes, so the same pixels as the manifest
            assert files["jpg"] == data
            assert np.array_equal(np.asarray(shards.load(i)[0]), np.asarray(manifest.load(i)[0]))
        else:  # the PNG is re-encoded as JPEG
            assert files["jpg"] != data and Image.open(io.BytesIO(files["jpg"])).format == "JPEG"
        assert shards.load(i)[1] == manifest.load(i)[1] == cap.strip()


def test_check_recognises_a_labelled_manifest_and_checks_labels_and_names(tmp_path, capsys):
    """A labelled manifest (filename, label, label_name) is checked as one, not rejected for 'caption'."""
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(6):
        Image.new("RGB", (40, 40), (40 * i, 0, 0)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"filename": f"{i}.png", "label": i % 3, "label_name": ["cat", "dog", "fox"][i % 3]})
    good = tmp_path / "val.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "check", str(good), "--root", str(tmp_path / "img"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "labelled manifest" in out and "ok: 6" in out and "classes: 3" in out and "caption" not in out

    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + "".join(json.dumps(r) + "\n" for r in (
        {"filename": "0.png", "label": "cat"}, {"filename": "1.png", "label": 1, "label_name": "wolf"})))
    report = check_manifest(str(bad), str(tmp_path / "img"), progress=False)
    assert report["problems"] == {"bad_line": 1, "label_name_conflict": 1} and report["classes"] == 3
    assert report["examples"]["bad_line"] == [f"{bad}:7: 'label' must be a non-negative integer, got 'cat'"]
    (tmp_path / "names.txt").write_text("cat\ndog\n")  # 2 classes: label 2 is out of range
    report = check_manifest(str(good), str(tmp_path / "img"), progress=False, classnames=str(tmp_path / "names.txt"))
    assert report["problems"] == {"bad_line": 2} and report["classes"] == 2
    assert "label 2 outside [0, 2)" in report["examples"]["bad_line"][0]
