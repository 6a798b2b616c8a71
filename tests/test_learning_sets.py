"""The learning benchmark's icon set, built from a small fake unpacked theme tree (no apt): a bug in how aliases,
synonyms and the theme split are handled would silently change what the benchmark measures."""
import json
import os
from pathlib import Path

from helpers import load_benchmark, tiny_overrides
from PIL import Image


def _icon(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", (32, 32), (*colour, 255)).save(path)


def test_icon_set_resolves_aliases_merges_synonyms_drops_ambiguous_and_splits_by_theme(tmp_path):
    ld = load_benchmark("learning_data")
    icons = tmp_path / "icon-debs" / "root" / "usr" / "share" / "icons"
    for t, theme in enumerate(ld.ICON_THEMES):
        folder = {"Faenza": "actions/32", "oxygen": "base/32x32/actions"}.get(theme, "32x32/actions")
        base = icons / theme / folder
        for k, name in enumerate(["edit-copy", "folder", "edit-delete", "list-remove"]):
            _icon(base / f"{name}.png", (t * 20, k * 40, 7))
        (base / "inode-directory.png").symlink_to("folder.png")  # an alias in every theme: one class
        if theme == "gnome":  # one picture drawn for two different names in one theme: ambiguous there
            (base / "list-remove.png").unlink()
            (base / "list-remove.png").symlink_to("edit-delete.png")
        if t < 6:
            _icon(base / "go-next.png", (1, 2, 3))  # 6 of 8 themes: not in the vocabulary
        _icon(icons / theme / "48x48" / "actions" / "edit-cut.png", (9, 9, 9))  # not 32 px
        _icon(base / "edit-copy-symbolic.png", (9, 9, 9))
    root = ld.build_icons(tmp_path)
    meta = json.loads((root / "meta.json").read_text())
    assert meta["classnames"] == ["edit copy", "edit delete", "folder", "list remove"]
    test_themes, val_themes = set(meta["themes"]["test"]), set(meta["themes"]["val"])
    assert len(test_themes) == 2 and len(val_themes) == 1 and not test_themes & val_themes
    splits = {p: [json.loads(line) for line in (root / f"{p}.jsonl").read_text().splitlines()]
              for p in ("train", "val", "test")}
    assert {r["theme"] for r in splits["train"]}.isdisjoint(test_themes | val_themes)
    assert {r["theme"] for r in splits["test"]} == test_themes
    assert len(splits["train"]) == 5 * 4  # folder once per theme, not again as inode-directory
    ambiguous = 1 if "gnome" in test_themes else 0
    assert len(splits["test"]) == 2 * 4 - 2 * ambiguous and meta["ambiguous_dropped"]["test"] == ambiguous
    for r in splits["test"]:
        assert meta["classnames"][r["label"]] == r["label_name"] and r["label_name"] in r["caption"]
        assert r["theme"] in r["filename"] and os.path.isfile(root / r["filename"])
        with Image.open(root / r["filename"]) as im:
            assert im.mode == "RGB" and im.size == (32, 32)


def _recorded(tmp_path: Path, runs: list[tuple[str, str, int, float]], steps: int = 300) -> Path:
    out = tmp_path / "results" / "learning"
    out.parent.mkdir()
    (tmp_path / "results" / "learning.json").write_text(json.dumps({"split": "test", "steps": steps, "runs": [
        {"set": s, "variant": v, "seed": seed, "split": "test", "top1": top1, "train_s": 1.0}
        for s, v, seed, top1 in runs]}))
    return out


def test_report_keeps_the_runs_its_json_records_when_the_workdir_is_gone(tmp_path, monkeypatch):
    """The run folders are scratch (a fresh machine has none): --report must rebuild the table from the JSON, and
    neither a report nor a grid may drop the JSON's runs outside it; a grid never retrains a recorded run."""
    lb = load_benchmark("learning")
    out = _recorded(tmp_path, [("digits", "openclip", 0, 90.0), ("digits", "openclip", 1, 92.0),
                               ("letters", "clip", 0, 40.0)])
    base = ["learning.py", "--workdir", str(tmp_path / "empty"), "--out", str(out), "--cache", str(tmp_path / "none")]
    monkeypatch.setattr("sys.argv", [*base, "--report", "--seeds", "2", "--sets", "digits", "--variants", "openclip"])
    assert lb.main() == 0
    assert "| openclip | 91.0 +- 1.4 (n=2) |" in (tmp_path / "results" / "learning.md").read_text()
    runs = json.loads((tmp_path / "results" / "learning.json").read_text())["runs"]
    assert sorted((r["set"], r["top1"]) for r in runs) == [("digits", 90.0), ("digits", 92.0), ("letters", 40.0)]

    grid_dir = tmp_path / "grid"
    grid_dir.mkdir()
    out = _recorded(grid_dir, [("digits", "openclip", 0, 90.0), ("letters", "clip", 0, 40.0)])
    base[base.index("--out") + 1] = str(out)
    monkeypatch.setattr("sys.argv", [*base, "--seeds", "1", "--sets", "digits", "--variants", "openclip"])

    def no_training(*args):
        raise AssertionError("a recorded run would be trained again")

    monkeypatch.setattr(lb, "build_all", no_training)
    assert lb.main() == 0
    runs = json.loads((grid_dir / "results" / "learning.json").read_text())["runs"]
    assert sorted((r["set"], r["top1"]) for r in runs) == [("digits", 90.0), ("letters", 40.0)]


def test_recorded_runs_are_only_those_of_the_same_split_and_schedule(tmp_path):
    lb = load_benchmark("learning")
    out = _recorded(tmp_path, [("icons", "openclip", 0, 10.0)], steps=900)
    assert lb.recorded_runs(Path(str(out) + ".json"), "test", 900) == {
        ("icons", "openclip", 0): {"set": "icons", "variant": "openclip", "seed": 0, "split": "test",
                                   "top1": 10.0, "train_s": 1.0}}
    assert lb.recorded_runs(Path(str(out) + ".json"), "test", 300) == {}
    assert lb.recorded_runs(Path(str(out) + ".json"), "val", 900) == {}


def test_rewriting_a_report_keeps_the_current_answer_that_opens_it(tmp_path):
    lb = load_benchmark("learning")
    report = tmp_path / "learning.md"
    report.write_text("# Learning benchmark\n\n## Current answer\n\n- DeCLIP wins on one set.\n\n"
                      "- date: old\n| old |\n")
    payload = {"split": "test", "date": "new-date", "command": "cmd", "machine": "m", "steps": 300,
               "runs": [{"set": "digits", "variant": "clip", "seed": 0, "top1": 50.0, "train_s": 1.0}]}
    lb.write_report(payload, ["digits"], ["clip"], report)
    text = report.read_text()
    assert "## Current answer\n\n- DeCLIP wins on one set." in text
    assert "- date: new-date" in text and "- date: old" not in text and "| old |" not in text
    assert text.index("Current answer") < text.index("- date: new-date")


def test_a_worker_restarts_the_run_a_killed_benchmark_left_in_its_folder(tmp_path):
    """The driver starts a worker only for a folder without result.json, so checkpoints there are a killed run's:
    the worker must train afresh, not fail on the trainer's one-run-per-folder guard (and lose the grid's seed)."""
    lb = load_benchmark("learning")
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(16):
        Image.new("RGB", (32, 32), (16 * i, 255 - 16 * i, 128)).save(root / "images" / f"{i}.png")
        lines.append(json.dumps({"filename": f"images/{i}.png", "caption": f"a picture of colour {i}"}))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    work = tmp_path / "run"
    (work / "ckpt").mkdir(parents=True)
    stale = work / "ckpt" / "ckpt_00000152.pt"
    stale.write_bytes(b"a killed run's checkpoint")
    tiny = tiny_overrides("train.batch_size=8", "model.vision.layers=1", "model.text.layers=1")
    model, preprocess = lb.train_ours(root, "clip", 0, work, tiny, steps=10)
    assert not stale.exists() and (work / "export").is_dir()
    assert model.encode_image(preprocess(Image.open(root / "images" / "0.png")).unsqueeze(0)).shape == (1, 64)
