"""``model.init_from`` (issues 38.3, 40.3): a damaged declip checkpoint, an unsafe pickle and an uncached
published model without network each fail in one line; the architecture comes from the source (no ``model.*``
keys), an explicit key that disagrees is one line naming both values; every loaded value changed is logged."""
import os
import pickle
import socket

import pytest
import torch

from declip.config import ConfigError, load_config
from declip.errors import CheckpointError
from declip.export import export_open_clip
from declip.methods import build_method
from declip.models.pretrained import read_weights
from declip.train.checkpoint import save_checkpoint
from declip.train.trainer import train
from helpers import TINY

pytestmark = pytest.mark.usefixtures("one_thread")
NO_MODEL_KEYS = [o for o in TINY if not o.startswith("model.")]  # the tiny run, minus every model.* key


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def saved(cfg, folder):
    """A declip checkpoint as training writes it (with its part checksums)."""
    torch.manual_seed(0)
    return save_checkpoint(folder, 3, {"model": build_method(cfg).state_dict(), "config": cfg.to_dict(),
                                       "step": 3}, keep_last=1)


def test_a_damaged_declip_checkpoint_is_refused_in_one_line(tiny_cfg, tmp_path):
    path = saved(tiny_cfg(), tmp_path / "run")
    state = torch.load(path, weights_only=True)
    state["model"]["clip.visual.proj"][0, 0] += 1.0  # one weight changed after the checksums were written
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"ckpt_00000003.pt is corrupt: its model does not match the "
                                              r"checksum .*; copy the file again") as e:
        read_weights(str(path))
    assert "\n" not in str(e.value) and "--resume" not in str(e.value)


def test_an_unsafe_pickle_is_refused_in_declips_words(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    for name, write in (("evil.pt", lambda p: p.write_bytes(pickle.dumps(Evil(), protocol=4))),
                        ("evil_zip.pt", lambda p: torch.save({"w": torch.zeros(2), "x": Evil()}, p))):
        path = tmp_path / name
        write(path)
        with pytest.raises(CheckpointError) as e:
            read_weights(str(path))
        line = str(e.value)
        assert f"{path} holds Python objects that a safe load (weights_only) refuses" in line
        assert "\n" not in line and "weights_only=False" not in line and "Re-running" not in line


def test_an_uncached_published_model_without_network_fails_at_once(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/nonexistent/hub")  # nothing cached

    def no_network(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    def no_download(*args, **kwargs):  # the retries (45 lines, ~54 s) must not even start
        raise AssertionError("a download was attempted without network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr("open_clip.pretrained.download_pretrained", no_download)
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda *a, local_files_only=False, **k:
                        (_ for _ in ()).throw(FileNotFoundError("not cached")) if local_files_only else no_download())
    with pytest.raises(CheckpointError, match=r"openclip:ViT-B-32/laion2b_s34b_b79k: not in open_clip's cache "
                                              r"and huggingface.co cannot be reached") as e:
        read_weights("openclip:ViT-B-32/laion2b_s34b_b79k")
    assert "\n" not in str(e.value)
    cfg = load_config(None, [*NO_MODEL_KEYS, "model.init_from=openclip:ViT-B-32/laion2b_s34b_b79k"])
    assert (cfg.model.embed_dim, cfg.model.vision.width, cfg.model.quick_gelu) == (512, 768, False)  # offline


def test_init_from_an_export_trains_with_no_model_keys(tiny_cfg, tmp_path):
    cfg = tiny_cfg("model.embed_dim=48", "model.vision.width=96", "model.vision.head_width=32")
    path = saved(cfg, tmp_path / "src")
    state = torch.load(path, weights_only=True)  # its logit scale is the init's, below the floor
    out = export_open_clip(path, tmp_path / "export")
    run = tmp_path / "run"
    fresh = load_config(None, [*NO_MODEL_KEYS, f"model.init_from=local-dir:{out}", f"train.output_dir={run}",
                               "train.steps=2", "eval.builtin=false"])
    assert (fresh.model.embed_dim, fresh.model.vision.width, fresh.model.vision.head_width) == (48, 96, 32)
    assert fresh.origins["model.vision.width"] == f"model.init_from ({out / 'open_clip_config.json'})"
    result = train(fresh)
    assert result["step"] == 2
    logged = (run / "train.log").read_text()
    assert f"model.init_from: towers loaded from {out / 'open_clip_model.safetensors'}" in logged
    assert f"model.init_from: architecture from {out / 'open_clip_config.json'}: model.embed_dim=48" in logged
    assert "logit_scale 2.659 (scale 14.3) raised to the floor model.logit_scale_min=3 (scale 20.1)" in logged
    assert state["model"]["clip.logit_scale"].item() == pytest.approx(2.6593, abs=1e-4)


def test_a_declip_checkpoint_states_its_architecture_too(tiny_cfg, tmp_path):
    path = saved(tiny_cfg("model.text.layers=1"), tmp_path / "src")
    cfg = load_config(None, [*NO_MODEL_KEYS, f"model.init_from={path}"])
    assert cfg.model.text.layers == 1 and cfg.model.vision.width == 64


def test_an_explicit_key_that_disagrees_is_one_line_naming_both(tiny_cfg, tmp_path):
    path = saved(tiny_cfg(), tmp_path / "src")
    out = export_open_clip(path, tmp_path / "export")
    with pytest.raises(ConfigError) as e:
        load_config(None, [*NO_MODEL_KEYS, f"model.init_from=local-dir:{out}", "model.vision.width=128"])
    line = str(e.value)
    assert line.startswith("command line (model.vision.width=128): model.vision.width=128 but model.init_from=")
    assert "has 64" in line and "open_clip_config.json" in line and "\n" not in line
    agreeing = load_config(None, [*NO_MODEL_KEYS, f"model.init_from=local-dir:{out}", "model.vision.width=64"])
    assert agreeing.model.vision.width == 64
