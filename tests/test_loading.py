"""``declip.load`` and the Hugging Face Hub layout, offline (issue 37.3): ``declip export --hf-hub DIR`` writes a
folder with a model card; placed in a huggingface_hub cache built here (models--ORG--NAME/snapshots/REV +
refs/main, HF_HUB_CACHE in tmp_path, HF_HUB_OFFLINE=1), open_clip's own ``hf-hub:`` loader, ``declip.load``,
``model.init_from`` and ``declip eval`` all read it and compute the checkpoint's features."""
import json
import shutil

import open_clip
import pytest
import torch
import yaml
from PIL import Image

from declip.cli import main
from declip.data.device_augment import normalize_on_device
from declip.data.tokenizer import tokenize
from declip.data.views import eval_transform_uint8
from declip.loading import load
from declip.train.checkpoint import list_checkpoints
from declip.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")
REPO, REV = "someorg/tiny-declip", "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny trained run (2 steps, the built-in evaluation logged), shared by the tests here."""
    from helpers import tiny_config

    folder = tmp_path_factory.mktemp("run")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the one_thread fixture is per test; this runs before it
    try:
        train(tiny_config(f"train.output_dir={folder}", "train.steps=2", "eval.max_images=10"))
    finally:
        torch.set_num_threads(before)
    return folder, list_checkpoints(folder)[-1][1]


@pytest.fixture
def hub(run, tmp_path, monkeypatch, capsys):
    """``declip export --hf-hub`` of the run, placed in a huggingface_hub cache under tmp_path (offline)."""
    from huggingface_hub import constants

    _, ckpt = run
    out = tmp_path / "hf"
    assert main(["export", str(ckpt), "--hf-hub", str(out), "--repo-id", REPO, "--license", "mit"]) == 0
    assert f"repo_id='{REPO}'" in capsys.readouterr().out
    cache = tmp_path / "hub"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    shutil.copytree(out, repo / "snapshots" / REV)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    for name, value in (("HF_HUB_CACHE", str(cache)), ("HF_HOME", str(tmp_path / "hf_home"))):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # huggingface_hub read both at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return out


def features(model, preprocess, tokenizer):
    image = Image.new("RGB", (50, 40), (200, 30, 60))
    image.paste((20, 180, 40), (5, 5, 30, 25))
    with torch.no_grad():
        return (model.encode_image(preprocess(image)[None]),
                model.encode_text(tokenizer(["a red square", "two green circles"])))


def test_export_for_the_hub_has_a_model_card(run, hub):
    assert {p.name for p in hub.iterdir()} == {"open_clip_config.json", "open_clip_model.safetensors", "README.md"}
    card = (hub / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "open_clip" and front["license"] == "mit" and "declip" in front["tags"]
    logged = [json.loads(line) for line in (run[0] / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in logged if r["kind"] == "eval"][-1]
    assert f"| builtin/top1 | {final['builtin/top1']:.2f} |" in card  # the run's closing evaluation
    assert "steps: 2 of 2" in card and "built-in generated shapes" in card and f"hf-hub:{REPO}" in card


def test_open_clip_and_declip_load_read_the_hub_cache(run, hub):
    _, ckpt = run
    ours = load(str(ckpt))
    theirs = open_clip.create_model_and_transforms(f"hf-hub:{REPO}")
    theirs = (theirs[0].eval(), theirs[2], open_clip.get_tokenizer(f"hf-hub:{REPO}"))
    via_declip = load(f"hf-hub:{REPO}")
    exported = load(str(hub))  # the folder itself (no prefix) and local-dir: are the same reference
    assert isinstance(via_declip[0], open_clip.CustomTextCLIP)
    reference = features(*ours)
    for other in (theirs, via_declip, exported, load(f"local-dir:{hub}")):
        for a, b in zip(features(*other), reference):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_load_gives_declip_evals_transform_and_tokenizer(run):
    model, preprocess, tokenizer = load(str(run[1]))
    assert not model.training
    image = Image.new("RGB", (70, 45), (10, 120, 240))
    size = model.visual.image_size[0]
    expected = normalize_on_device(eval_transform_uint8(size)(image)[None])[0]
    torch.testing.assert_close(preprocess(image), expected, rtol=0, atol=1e-6)
    captions = ["a photo of a cat", "x " * 100]
    assert torch.equal(tokenizer(captions), tokenize(captions, 77))


def test_init_from_and_eval_take_a_hub_name(run, hub, tmp_path, capsys):
    from declip.config import load_config
    from helpers import TINY

    _, ckpt = run
    no_model = [o for o in TINY if not o.startswith("model.")]
    result = train(load_config(None, [*no_model, f"model.init_from=hf-hub:{REPO}", "train.steps=1",
                                      f"train.output_dir={tmp_path / 'ft'}", "eval.builtin=false"]))
    assert result["step"] == 1
    assert f"towers loaded from {hub.parent / 'hub'}" in (tmp_path / "ft" / "train.log").read_text()
    capsys.readouterr()
    args = ["--builtin", "--task", "zeroshot", "--max-images", "10", "--num-workers", "0"]
    assert main(["eval", "--checkpoint", str(ckpt), *args]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", f"hf-hub:{REPO}", *args]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(ours)
