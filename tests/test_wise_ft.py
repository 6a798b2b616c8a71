"""WiSE-FT (issue 40): ``declip export --interpolate ALPHA --from START`` writes the weight-space mix of the towers,
loadable in open_clip; ``declip eval --interpolate A,B --from START`` scores each mix."""
import json

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from declip.cli import main as cli_main
from declip.export import CONFIG_NAME, WEIGHTS_NAME, export_open_clip
from declip.methods import build_method

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def checkpoint(cfg, path, seed):
    """A DeCLIP checkpoint with its own random towers (every tensor differs between two seeds)."""
    torch.manual_seed(seed)
    method = build_method(cfg)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save({"model": method.state_dict(), "config": cfg.to_dict(), "step": seed}, path)
    return {k.removeprefix("clip."): v for k, v in method.state_dict().items() if k.startswith("clip.")}


@pytest.mark.parametrize("start_kind", ["checkpoint", "export"])
def test_interpolate_half_is_the_mean_and_loads_in_open_clip(tiny_cfg, tmp_path, start_kind):
    cfg = tiny_cfg("method.name=declip")
    start = checkpoint(cfg, tmp_path / "start.pt", seed=1)
    tuned = checkpoint(cfg, tmp_path / "tuned.pt", seed=2)
    source = tmp_path / "start.pt"
    if start_kind == "export":  # an export folder, as model.init_from takes it
        source = export_open_clip(tmp_path / "start.pt", tmp_path / "start_export")
    out = tmp_path / "mix"
    assert cli_main(["export", str(tmp_path / "tuned.pt"), str(out), "--interpolate", "0.5", "--from",
                     str(source)]) == 0
    mixed = load_file(str(out / WEIGHTS_NAME))
    assert set(mixed) == set(tuned)
    for key, value in tuned.items():
        expected = (start[key] + value) / 2 if value.is_floating_point() else value
        assert torch.equal(mixed[key], expected), key
        if value.is_floating_point():
            assert not torch.equal(mixed[key], value), key  # not a trivial pass: the two models differ
    provenance = json.loads((out / CONFIG_NAME).read_text())["declip"]["wise_ft"]
    assert provenance == {"from": str(source), "alpha": 0.5}
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    assert torch.equal(model.state_dict()["text.token_embedding.weight"], mixed["text.token_embedding.weight"])


def test_interpolate_ends_are_the_two_models(tiny_cfg, tmp_path):
    cfg = tiny_cfg("method.name=clip")
    start = checkpoint(cfg, tmp_path / "start.pt", seed=1)
    tuned = checkpoint(cfg, tmp_path / "tuned.pt", seed=2)
    for alpha, expected in ((0.0, start), (1.0, tuned)):
        out = export_open_clip(tmp_path / "tuned.pt", tmp_path / f"a{alpha}", interpolate=alpha,
                               start=str(tmp_path / "start.pt"))
        mixed = load_file(str(out / WEIGHTS_NAME))
        assert all(torch.equal(mixed[k], expected[k]) for k in expected)


def test_interpolate_refuses_another_architecture_in_one_line(tiny_cfg, tmp_path, capsys):
    checkpoint(tiny_cfg("method.name=clip"), tmp_path / "tuned.pt", seed=2)
    checkpoint(tiny_cfg("method.name=clip", "model.text.width=32"), tmp_path / "other.pt", seed=1)
    code = cli_main(["export", str(tmp_path / "tuned.pt"), str(tmp_path / "x"), "--interpolate", "0.5",
                     "--from", str(tmp_path / "other.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "--from" in err and "one architecture" in err and "text." in err
    assert cli_main(["export", str(tmp_path / "tuned.pt"), str(tmp_path / "x"), "--interpolate", "0.5"]) == 2
    assert cli_main(["export", str(tmp_path / "tuned.pt"), str(tmp_path / "x"), "--interpolate", "2",
                     "--from", str(tmp_path / "other.pt")]) == 1
    assert "in [0, 1]" in capsys.readouterr().err
