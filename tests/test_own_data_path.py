"""The README's "Train on your own data" section, run as written (issue 31): its `declip` commands are parsed
from the README, so a change there that breaks the path breaks this test. They run in order on a small
generated set (`declip data example DIR`, the README's own command for it, smaller), with the recipe picked by
its shipped name and the tiny model appended (tests/helpers.py TINY wins over the README's sizes and steps):
write the example, check the data, train, evaluate zero-shot and retrieval, export, and load the export in
open_clip."""
import json
import re
import shlex
from pathlib import Path

import pytest

from declip.eval.example_data import write_example
from helpers import TINY, readme_commands, readme_section

pytestmark = pytest.mark.usefixtures("one_thread")
# Evaluation in-process and without worker processes: the point is the path, not the loader.
FAST = ["eval.num_workers=0", "eval.batch_size=32"]
SMALL_EXAMPLE = ["--pairs", "48", "--labelled", "20", "--captions", "10"]


def _by_command(commands: list[list[str]]) -> dict[str, list[str]]:
    """The first command of each kind: 'data' (check), 'train', 'eval', 'export'."""
    found = {}
    for argv in commands:
        found.setdefault(argv[0], argv)
    return found


def _example_command(section: str) -> tuple[list[str], str]:
    """The README's `declip data example DIR && cd DIR` (inline, before the steps): (argv, the folder to enter)."""
    found = re.search(r"`declip (data example [^`&]+?) && cd ([^`]+)`", section)
    assert found, "the README's own-data section says how to write the example set (declip data example DIR)"
    return shlex.split(found.group(1)), found.group(2).strip()


def test_readme_own_data_commands_run_as_written(tmp_path, monkeypatch, capsys):
    import open_clip

    from declip.cli import main

    section = readme_section("Train on your own data")
    commands = _by_command(readme_commands(section))
    assert set(commands) >= {"data", "train", "eval", "export"}, commands

    example, folder = _example_command(section)  # written by the installed package: no clone needed
    monkeypatch.chdir(tmp_path)
    assert main([*example, *SMALL_EXAMPLE]) == 0
    assert "wrote an example own-data set" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path / folder)  # the README's paths are relative to the data folder

    check = commands["data"]
    assert check[:2] == ["data", "check"], check
    assert main(check) == 0
    assert "ok: 48" in capsys.readouterr().out

    train = commands["train"]
    assert train[train.index("--config") + 1] == "declip_small_data"  # by its shipped name, not a path
    assert main([*train, *TINY, *FAST]) == 0
    summary = capsys.readouterr().out
    assert "last zero-shot top-1 (eval.val_manifest, 20 held-out images)" in summary, summary

    evaluate = commands["eval"]
    checkpoint = Path(evaluate[evaluate.index("--checkpoint") + 1])
    assert checkpoint.is_file(), f"the README evaluates {checkpoint}, which the train command did not write"
    assert main([*evaluate, "--num-workers", "0"]) == 0
    lines = capsys.readouterr().out
    zeroshot = re.search(r"^val: top1=([\d.]+) .*images=20 ", lines, re.M)
    retrieval = re.search(r"^retrieval: i2t_r1=([\d.]+) .* images=10 ", lines, re.M)
    assert zeroshot and retrieval, lines
    assert 0 <= float(zeroshot.group(1)) <= 100 and 0 <= float(retrieval.group(1)) <= 100

    export = commands["export"]
    assert main(export) == 0
    out = Path(export[-1]).resolve()
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"]["vision_cfg"]["image_size"] == 32
    assert model.visual.output_dim == config["model_cfg"]["embed_dim"]


@pytest.mark.parametrize("method", ["slip", "filip", "defilip", "declip+sigmoid"])
def test_every_method_trains_on_a_manifest_and_ends_with_a_zero_shot(tmp_path, monkeypatch, capsys, method):
    """Issue 29: the family beyond CLIP/DeCLIP on a user's own files (a manifest, not the built-in data), ending
    with zero-shot on a labelled manifest, as the README's own-data path does."""
    from declip.cli import main

    write_example(tmp_path, pairs=32, labelled=10, captions=4)
    monkeypatch.chdir(tmp_path)
    name, _, loss = method.partition("+")
    args = ["train", "data.source=manifest", "data.path=captions.jsonl", "data.root=images",
            "eval.val_manifest=labels.jsonl", "eval.val_root=images", f"method.name={name}", *TINY, *FAST,
            "train.steps=2", "method.simclr_hidden_dim=32", "method.simclr_out_dim=16",
            f"train.output_dir={tmp_path / 'run'}", *([f"method.contrastive_loss={loss}"] if loss else [])]
    assert main(args) == 0
    summary = capsys.readouterr().out
    assert "last zero-shot top-1 (eval.val_manifest, 10 held-out images)" in summary, summary
    assert (tmp_path / "run" / "ckpt_00000002.pt").is_file()
