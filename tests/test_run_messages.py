"""The run folder's and the checkpoint's failures as one line each, naming the file or key and a correct next
step (issue 30, points 3, 6 and 8), and a checkpoint that refuses a change in any part a resume reads."""
import copy
import errno
import json
import os
import warnings

import pytest
import torch

from helpers import TINY
from test_fail_fast import one_line_error
from declip.errors import CheckpointError, RunDirError
from declip.train import metrics as metrics_module
from declip.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from declip.train.run_dir import resume_path
from declip.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------- 3. --overwrite
def test_overwrite_run_logs_into_a_fresh_train_log(tiny_cfg):
    train(tiny_cfg("method.name=clip", "train.steps=2", "eval.builtin=false"))
    cfg = tiny_cfg("method.name=clip", "train.steps=3", "eval.builtin=false")
    train(cfg, overwrite=True)
    with open(os.path.join(cfg.train.output_dir, "train.log")) as f:
        log = f.read()
    assert "step 3/3" in log and "step 2/2" not in log, log


# ------------------------------------------------------------------- 6. every part under a checksum
def _changed(state: dict, part: str) -> dict:
    """The payload with one byte of one part flipped (the checksums as written)."""
    state = copy.deepcopy(state)
    if part == "rng.torch":
        state["rng"][0]["torch"][100] ^= 0x01
    elif part == "rng.python":
        version, internal, gauss = state["rng"][0]["python"]
        state["rng"][0]["python"] = (version, (*internal[:5], internal[5] ^ 1, *internal[6:]), gauss)
    elif part == "step":
        state["step"] ^= 1
    elif part == "data":
        state["data"]["consumed"] ^= 1
    elif part == "queue":
        bank = state["model"]["queue.bank"]
        bank.view(-1).view(torch.uint8)[3] ^= 0x01
    elif part == "config":
        state["config"]["train"]["seed"] ^= 1
    return state


@pytest.fixture(scope="module")
def declip_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    from helpers import tiny_config

    train(tiny_config("method.name=declip", "train.steps=2", "eval.builtin=false", f"train.output_dir={out}"))
    return list_checkpoints(out)[-1][1]


@pytest.mark.parametrize("part", ["rng.torch", "rng.python", "step", "data", "queue", "config"])
def test_a_byte_flipped_in_any_part_is_refused(declip_checkpoint, tmp_path, part):
    state = torch.load(declip_checkpoint, weights_only=True)
    same = tmp_path / "same.pt"
    torch.save(state, same)
    assert load_checkpoint(same)["step"] == 2  # the round trip alone changes nothing
    flipped = tmp_path / "flipped.pt"
    torch.save(_changed(state, part), flipped)
    name = {"rng.torch": "rng", "rng.python": "rng", "queue": "model"}.get(part, part)
    with pytest.raises(CheckpointError, match=rf"flipped.pt is corrupt: its {name} does not match the checksum.*"
                                              r"--resume PATH"):
        load_checkpoint(flipped)


def test_a_flipped_checkpoint_refuses_to_resume_in_one_line(declip_checkpoint, tmp_path, capsys):
    flipped = tmp_path / "flipped.pt"
    torch.save(_changed(torch.load(declip_checkpoint, weights_only=True), "data"), flipped)
    line = one_line_error(capsys, "train", *TINY, f"train.output_dir={tmp_path / 'run'}", "method.name=declip",
                          "--resume", str(flipped))
    assert "its data does not match the checksum" in line


# ----------------------------------------------------------------------------------- 8. messages
def _full_disk_save(obj, f):
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 64")


def test_disk_full_at_the_first_checkpoint_suggests_no_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch, "save", _full_disk_save)
    line = one_line_error(capsys, "train", *TINY, f"train.output_dir={tmp_path / 'run'}", "eval.builtin=false",
                          "method.name=clip")
    assert "cannot write" in line and "ckpt_00000004.pt" in line and "MiB free" in line
    assert "enforce fail" not in line and "inline_container" not in line and "--resume" not in line
    assert "--overwrite (there is no checkpoint to resume yet)" in line


def test_disk_full_after_a_checkpoint_suggests_resume(tmp_path, monkeypatch):
    payload = {"model": {"w": torch.ones(4)}, "step": 2, "config": {}}
    save_checkpoint(tmp_path, 2, payload, keep_last=3)
    monkeypatch.setattr(torch, "save", _full_disk_save)
    with pytest.raises(CheckpointError, match=r"ckpt_00000004.pt \(the write failed; .* then resume with "
                                              r"--resume latest$"):
        save_checkpoint(tmp_path, 4, payload, keep_last=3)


class _FullDisk:
    def __init__(self, f):
        self.f = f

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self):
        self.f.close()


def test_disk_full_on_metrics_names_the_file(tmp_path, capsys, monkeypatch):
    real_init = metrics_module.MetricsWriter.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        if self.enabled:
            self.jsonl = _FullDisk(self.jsonl)

    monkeypatch.setattr(metrics_module.MetricsWriter, "__init__", init)
    line = one_line_error(capsys, "train", *TINY, f"train.output_dir={tmp_path / 'run'}", "method.name=clip")
    assert f"cannot write {tmp_path / 'run' / 'metrics.jsonl'} (No space left on device;" in line
    assert "free some space, then start the run again with --overwrite" in line


def test_output_dir_that_is_a_file_names_the_key(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", tmp_path / "afile" / "run"):
        line = one_line_error(capsys, "train", *TINY, f"train.output_dir={out}")
        assert f"train.output_dir={out}: {tmp_path / 'afile'} is a file, not a folder" in line
        assert "Errno" not in line


def test_unsafe_pickle_is_one_clean_line_without_torch_warnings(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    import pickle

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Evil(), protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = one_line_error(capsys, "eval", "--checkpoint", str(evil))
    assert f"{evil} holds Python objects that a safe load (weights_only) refuses" in line
    assert "not a declip checkpoint" in line and "argumen" not in line and "truncated" not in line
    assert not caught, [str(w.message) for w in caught]


def test_fresh_run_refuses_an_interrupted_runs_metrics(tiny_cfg):
    cfg = tiny_cfg("method.name=clip", "eval.builtin=false")
    run = cfg.train.output_dir
    os.makedirs(run)
    records = "".join(json.dumps({"kind": "train", "step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3))
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        f.write(records)
    with pytest.raises(RunDirError, match=r"metrics.jsonl holds an earlier run's metrics \(up to step 3\) but no "
                                          r"checkpoint.*--overwrite"):
        train(cfg)
    assert open(os.path.join(run, "metrics.jsonl")).read() == records, "kept as they were"
    assert not os.path.exists(os.path.join(run, "train.log"))
    assert resume_path("latest-or-new", run) is None  # a requeue of a run killed before its first checkpoint
    with open(os.path.join(run, "metrics.jsonl"), "w"):
        pass
    assert resume_path(None, run) is None  # an empty file (a start that failed): nothing to lose
