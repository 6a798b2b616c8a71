"""The Python API (issue 37): every name docs/api.md documents imports from ``declip``, the page's examples run as
written (its ``bash`` set-up, then every ``python`` block in order, in one folder), ``import declip`` loads no
torch, the wheel carries the docs and recipes that ``declip docs`` and ``--config NAME`` read, methods wrap an
existing open_clip model, and the CLI commands that share the API's path (config show, eval --output, docs)."""
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import declip
from declip.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
API_DOC = ROOT / "docs" / "api.md"


def _documented_names() -> set[str]:
    """The names of the page's first table (``name(...)`` or ``name``, several per row for the losses)."""
    table = API_DOC.read_text(encoding="utf-8").split("\n| name | what |\n", 1)[1].split("\n\n", 1)[0]
    names = set()
    for row in table.splitlines()[1:]:
        first_cell = row.split(" | ")[0]
        names.update(re.findall(r"`([A-Za-z_]\w*)", first_cell))
    return names


def test_every_documented_name_imports_and_is_public():
    names = _documented_names()
    assert {"load_config", "train", "evaluate", "build_method", "make_batch", "SoftmaxPairLoss"} <= names, names
    for name in sorted(names):
        assert name in declip.__all__, name
        assert getattr(declip, name) is not None, name
    undocumented = set(declip.__all__) - names - {"__version__"}
    assert not undocumented, f"public but not in docs/api.md: {undocumented}"
    with pytest.raises(AttributeError):
        declip.no_such_name  # noqa: B018


def test_import_declip_and_load_config_load_no_torch():
    code = ("import sys, declip; cfg = declip.load_config('declip_small_data', {'data.path': 'a.jsonl', "
            "'data.root': 'i'}); assert cfg.data.path == 'a.jsonl'; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_load_config_resolves_as_the_command_line_does():
    assert declip.load_config().method.name == "declip"  # the demo, as `declip train`
    own = declip.load_config(None, ["data.source=csv", "data.path=x.csv"])  # the own-data defaults
    assert own.model.preset == "vit-b-32" and own.data.path == "x.csv"
    mapped = declip.load_config("declip_small_data", {"data.path": "a: b.jsonl", "data.root": "i",
                                                      "optim.betas": [0.9, 0.95]})
    assert mapped.data.path == "a: b.jsonl" and mapped.optim.betas == [0.9, 0.95]
    with pytest.raises(declip.ConfigError, match="data.path"):
        declip.load_config("declip_small_data")  # a required key: refused unless allow_unset
    assert declip.load_config("declip_small_data", allow_unset=True).data.path == ""
    with pytest.raises(declip.ConfigError, match="not one string"):
        declip.load_config(None, "train.steps=3")


def test_train_refuses_a_config_loaded_with_a_required_key_unset(tmp_path):
    cfg = declip.load_config("declip_small_data", {"train.output_dir": str(tmp_path / "run")}, allow_unset=True)
    with pytest.raises(declip.ConfigError, match="data.path: data.source=manifest needs a path"):
        declip.train(cfg)
    assert not (tmp_path / "run").exists()  # refused before the output folder was claimed


@pytest.mark.slow
def test_the_api_page_examples_run_as_written(tmp_path, monkeypatch, capsys):
    """The page's set-up (`declip data example ...`, `cd ...`), then its python blocks in order (~45 s: it trains
    6 steps of the small-data recipe and evaluates, as a reader would)."""
    text = API_DOC.read_text(encoding="utf-8")
    setup = [shlex.split(line) for block in re.findall(r"```bash\n(.*?)```", text, re.S)
             for line in block.splitlines() if line.strip()]
    monkeypatch.chdir(tmp_path)
    for argv in setup:
        if argv[0] == "cd":
            monkeypatch.chdir(argv[1])
        else:
            assert argv[0] == "declip" and main(argv[1:]) == 0, argv
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 5, "load_config, train, evaluate, methods, losses"
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md python block {i + 1}", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "command line (optim.lr=-1): optim.lr: must be > 0" in out
    summary = namespace["summary"]
    assert summary["step"] == 6 and Path(summary["checkpoint"]).is_file()
    assert namespace["method"].clip is namespace["model"]  # the open_clip model wrapped, not copied


def test_build_method_wraps_an_open_clip_model_and_refuses_what_it_cannot_feed():
    import open_clip
    import torch
    from PIL import Image

    torch.manual_seed(0)
    vision = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16}
    model = open_clip.CLIP(embed_dim=32, vision_cfg=vision,
                           text_cfg={"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                     "layers": 1})
    cfg = declip.load_config(None, {"method.name": "declip", "method.mlm_weight": 0, "method.queue_size": 16})
    method = declip.build_method(cfg, model)
    assert method.clip is model
    assert (method.cfg.model.embed_dim, method.cfg.model.vision.image_size, method.cfg.model.text.context_length) \
        == (32, 32, 16)
    images = [Image.new("RGB", (40, 40), (i * 60, 0, 0)) for i in range(4)]
    batch = declip.make_batch(method, images, [f"a red square number {i}" for i in range(4)])
    assert batch["images"].shape == (4, 2, 3, 32, 32) and batch["text"].shape == (4, 16)
    losses, _ = method(batch)
    sum(losses.values()).backward()
    assert model.visual.transformer.resblocks[0].mlp.c_fc.weight.grad is not None  # the given model trains
    with pytest.raises(declip.ConfigError, match="method.mlm_weight: .*set method.mlm_weight=0"):
        declip.build_method(declip.load_config(None, {"method.name": "declip"}), model)


def test_evaluate_takes_eval_keys_only():
    with pytest.raises(declip.ConfigError, match="eval.KEY=VALUE overrides only"):
        declip.evaluate("ckpt.pt", {"model.embed_dim": 3})


def test_config_show_prints_a_recipe_whose_data_keys_are_unset_and_train_refuses_it(capsys):
    assert main(["config", "show", "--config", "declip_small_data"]) == 0
    out = capsys.readouterr().out
    path_line = next(line for line in out.splitlines() if line.startswith("data.path:"))
    assert "UNSET" in path_line and "set data.path=" in path_line, path_line
    assert "required key(s) unset: data.path, data.root" in out
    assert main(["train", "--config", "declip_small_data", "data.root=images"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.path: data.source=manifest needs a path" in err[0], err
    from declip.recipes import recipe_names

    for name in recipe_names():  # every shipped recipe shows as shipped, its data keys set or not
        assert main(["config", "show", "--config", name]) == 0, name
    unset = [line for line in capsys.readouterr().out.splitlines() if "# UNSET" in line]
    assert unset and all(line.startswith(("data.path:", "data.root:")) for line in unset), unset


def test_declip_docs_prints_the_shipped_pages(capsys):
    assert main(["docs", "data-formats"]) == 0
    assert capsys.readouterr().out == (ROOT / "docs" / "data-formats.md").read_text(encoding="utf-8")
    assert main(["docs"]) == 0
    index = capsys.readouterr().out
    assert "declip docs TOPIC" in index and "api" in index and "readme" in index
    assert main(["docs", "readme"]) == 0
    assert capsys.readouterr().out.startswith("# declip\n\n## Quick start")
    assert main(["docs", "no-such-page"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no docs page 'no-such-page'" in err[0] and "data-formats" in err[0]


def test_eval_output_writes_the_printed_json(tmp_path, capsys):
    import torch

    from helpers import tiny_config

    cfg = tiny_config("eval.num_workers=0", "eval.batch_size=16", small=True)
    torch.manual_seed(0)
    method = declip.build_method(cfg)
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"model": method.state_dict(), "config": cfg.to_dict(), "step": 1}, checkpoint)
    out_file = tmp_path / "metrics.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--output", str(out_file)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out_file.read_text()) == printed and "builtin/top1" in printed
    assert main(["eval", "--checkpoint", str(checkpoint), "--brief", "--output", str(tmp_path / "b.json")]) == 0
    assert capsys.readouterr().out.startswith("builtin: top1=")  # --brief prints lines; the file is the JSON
    assert json.loads((tmp_path / "b.json").read_text()) == printed
    direct = declip.evaluate(checkpoint)  # the API returns what the command prints (unrounded)
    assert set(direct) == set(printed) and direct["builtin/top1"] == pytest.approx(printed["builtin/top1"])
    assert main(["eval", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "no" / "dir" / "m.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --output ") and "writable" in err[0], err


def test_progress_bars_draw_on_a_terminal_only(monkeypatch):
    from declip.eval.common import progress, show_progress

    assert progress(range(3)).disable  # outside declip eval: never
    with show_progress(True):
        assert progress(range(3)).disable  # a pipe (pytest captures stderr): no bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with show_progress(True):
        assert not progress(range(3)).disable
    with show_progress(False):  # --no-progress
        assert progress(range(3)).disable


@pytest.mark.slow
def test_the_wheel_ships_the_docs_readme_and_recipes(tmp_path):
    """Built from a copy of the sources (links kept, so the wheel must follow them; ~10 s)."""
    pytest.importorskip("setuptools", reason="the build backend (dev extra) builds the wheel")
    pytest.importorskip("wheel", reason="the build backend (dev extra) builds the wheel")
    src = tmp_path / "src_tree"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "docs"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    assert (src / "src" / "declip" / "docs").is_symlink()  # the repository's docs/, not a copy in git
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("declip-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    docs = {f"declip/docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    recipes = {f"declip/configs/{p.name}" for p in (ROOT / "src" / "declip" / "configs").glob("*.yaml")}
    assert "declip/docs/api.md" in docs and "declip/configs/declip_small_data.yaml" in recipes
    assert docs | recipes | {"declip/README.md", "declip/api.py"} <= names, sorted(docs | recipes - names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "Project-URL: Paper, https://arxiv.org/abs/2110.05208" in zipfile.ZipFile(wheel).read(metadata).decode()
