"""Checkpoint contents, crash safety, best.pt, and the non-finite guard (in-process, tiny towers)."""
import io
import math
import os
import random
from pathlib import Path

import pytest
import torch

from declip.train import checkpoint as ckpt
from declip.train.checkpoint import (link_best, list_checkpoints, load_checkpoint, resolve_resume, rng_state,
                                     save_best, save_checkpoint, set_rng_state)
from declip.errors import CheckpointError, NonFiniteError as NonFiniteLoss
from declip.train.trainer import Trainer
from helpers import metrics


pytestmark = pytest.mark.usefixtures("one_thread")


def run_trainer(cfg, setup=None):
    trainer = Trainer(cfg)
    try:
        if setup:
            setup(trainer)
        return trainer, trainer.train()
    finally:
        trainer.close()


def all_finite(tree) -> bool:
    if torch.is_tensor(tree):
        return not tree.is_floating_point() or bool(torch.isfinite(tree).all())
    if isinstance(tree, dict):
        return all(all_finite(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return all(all_finite(v) for v in tree)
    return not isinstance(tree, float) or math.isfinite(tree) or tree == float("-inf")  # best before any eval


# ------------------------------------------------------------------------------------------ contents
def test_payload_holds_everything_and_loads_weights_only(tiny_cfg):
    cfg = tiny_cfg("train.steps=2", "eval.builtin=false")
    trainer, _ = run_trainer(cfg)
    (step, path), = list_checkpoints(cfg.train.output_dir)
    state = torch.load(path, map_location="cpu", weights_only=True)  # no pickle beyond tensors/containers
    assert step == state["step"] == 2 and state["data"]["consumed"] == 2 * 8
    model = state["model"]
    for key in ("queue.bank", "queue.ptr", "queue.seen", "steps_done", "projector.net.1.running_mean",
                "clip.logit_scale"):
        assert key in model, key
    assert int(model["queue.seen"]) == 2 * 2 * 8 and int(model["steps_done"]) == 2
    trainable = [p for p in trainer.method.parameters() if p.requires_grad]
    assert len(state["optimizer"]["state"]) == len(trainable)  # Adam moments of every trained tensor
    assert all(int(s["step"]) == 2 for s in state["optimizer"]["state"].values())
    assert state["config"] == cfg.to_dict()
    (rng,) = state["rng"]
    version, internal, _gauss = rng["python"]  # random.getstate()
    assert version == 3 and rng["torch"].dtype == torch.uint8 and len(internal) == 625
    assert all_finite(model)


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1)
    random.seed(2)
    random.gauss(0, 1)  # a cached gauss value is part of Python's state
    saved = rng_state()
    ckpt.atomic_torch_save({"rng": [saved]}, tmp_path / "r.pt")
    expected = (torch.rand(4), random.random(), random.gauss(0, 1))
    torch.manual_seed(99)
    random.seed(99)
    set_rng_state(load_checkpoint(tmp_path / "r.pt", require=("rng",))["rng"][0])
    got = (torch.rand(4), random.random(), random.gauss(0, 1))
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_best_pt_follows_the_best_eval_and_is_never_pruned(tiny_cfg, monkeypatch):
    scores = iter([10.0, 30.0, 20.0])  # evals at steps 1, 2 and the final one at 3
    monkeypatch.setattr("declip.eval.suite.run_evaluation", lambda *a, **k: {"builtin/top1": next(scores)})
    cfg = tiny_cfg("train.steps=3", "eval.every=1", "train.ckpt_every=1", "train.keep_last=1")
    run_trainer(cfg)
    run = cfg.train.output_dir
    assert [s for s, _ in list_checkpoints(run)] == [3]
    best = load_checkpoint(resolve_resume("best", run))
    assert best["step"] == 2 and best["best"] == 30.0 and best["best_step"] == 2
    final = load_checkpoint(resolve_resume("latest", run))
    assert final["best"] == 30.0 and final["best_step"] == 2
    assert resolve_resume("latest", run).name == "ckpt_00000003.pt"


def test_best_pt_at_a_checkpoint_step_is_that_checkpoint_not_a_copy(tiny_cfg, monkeypatch):
    scores = iter([10.0, 30.0, 20.0, 5.0])  # best at step 2, a checkpoint step
    monkeypatch.setattr("declip.eval.suite.run_evaluation", lambda *a, **k: {"builtin/top1": next(scores)})
    cfg = tiny_cfg("train.steps=4", "eval.every=1", "train.ckpt_every=2", "train.keep_last=2")
    run_trainer(cfg)
    run = Path(cfg.train.output_dir)
    assert os.path.samefile(run / "best.pt", run / "ckpt_00000002.pt")  # one payload on disk
    assert load_checkpoint(run / "best.pt")["best_step"] == 2


def test_link_best_copies_where_the_filesystem_has_no_hard_links(tmp_path, monkeypatch):
    ckpt = save_checkpoint(tmp_path, 2, small(2), keep_last=1)

    def no_links(*a):
        raise OSError("hard links not supported (injected)")

    monkeypatch.setattr(os, "link", no_links)
    best = link_best(tmp_path, ckpt)
    assert not os.path.samefile(best, ckpt) and best.read_bytes() == ckpt.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "ckpt_00000002.pt"]  # no temporary left


# ------------------------------------------------------------------------------------ crash safety
def small(step: int) -> dict:
    return {"model": {"w": torch.full((256,), float(step))}, "step": step, "config": {}}


def _half_then_raise(real_save):
    def save(obj, f, *a, **k):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError("disk full (injected)")

    return save


def _raise(*a, **k):
    raise OSError("I/O error (injected)")


@pytest.mark.parametrize("where", ["torch.save", "fsync", "rename"])
def test_crash_in_the_middle_of_a_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    save_checkpoint(tmp_path, 2, small(2), keep_last=3)
    save_best(tmp_path, small(2))
    with monkeypatch.context() as m:
        if where == "torch.save":
            m.setattr(torch, "save", _half_then_raise(torch.save))
        elif where == "fsync":
            m.setattr(os, "fsync", _raise)
        else:
            m.setattr(os, "replace", _raise)
        with pytest.raises((OSError, CheckpointError), match="injected"):
            save_checkpoint(tmp_path, 4, small(4), keep_last=3)
        with pytest.raises((OSError, CheckpointError), match="injected"):
            save_best(tmp_path, small(4))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    assert resolve_resume("latest", tmp_path) == tmp_path / "ckpt_00000002.pt"
    assert load_checkpoint(resolve_resume("latest", tmp_path))["step"] == 2
    assert load_checkpoint(resolve_resume("best", tmp_path))["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "ckpt_00000002.pt"]  # no partial file


def test_a_killed_writer_leaves_a_tmp_file_that_is_ignored_then_removed(tmp_path):
    save_checkpoint(tmp_path, 2, small(2), keep_last=3)
    stale = tmp_path / ".ckpt_00000004.pt.tmp.4194303"  # SIGKILL between open() and rename: no cleanup ran
    stale.write_bytes(b"\x80\x02 half a zip")
    assert resolve_resume("latest", tmp_path) == tmp_path / "ckpt_00000002.pt"
    save_checkpoint(tmp_path, 4, small(4), keep_last=3)
    assert not stale.exists()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4]


def test_keep_last_and_clear_errors(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, small(step), keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5]
    assert resolve_resume("latest", tmp_path / "empty") is None
    with pytest.raises(CheckpointError, match="nope.pt"):
        resolve_resume(str(tmp_path / "nope.pt"), tmp_path)
    broken = tmp_path / "ckpt_00000009.pt"
    broken.write_bytes((tmp_path / "ckpt_00000005.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="ckpt_00000009.pt"):
        load_checkpoint(broken)
    with pytest.raises(NonFiniteLoss, match="non-finite"):
        save_checkpoint(tmp_path, 10, {"model": {"w": torch.tensor([1.0, float("nan")])}}, keep_last=2)
    assert not (tmp_path / "ckpt_00000010.pt").exists()


# ---------------------------------------------------------------------------------- non-finite guard
def poison_on_call(module: torch.nn.Module, call: int) -> None:
    """Forward hook: the ``call``-th forward of ``module`` returns NaN features (a tuple: the pooled part)."""
    count = {"n": 0}

    def hook(_mod, _inp, out):
        count["n"] += 1
        if count["n"] - 1 != call:
            return None
        if isinstance(out, tuple):
            return (out[0] * float("nan"), *out[1:])
        return out * float("nan")

    module.register_forward_hook(hook)


# the skip decided on the host (a flag read every step) and on the device (fused AdamW's found_inf, read at
# log/eval/checkpoint steps): the same behaviour, whichever the optimizer allows
SKIP_PATHS = pytest.mark.parametrize("fused", ["optim.fused=false", "optim.fused=true"])


@SKIP_PATHS
def test_nonfinite_skip_counts_continues_and_keeps_nan_out(tiny_cfg, fused):
    cfg = tiny_cfg("train.steps=4", "train.ckpt_every=1", "train.keep_last=10", "eval.builtin=false", fused)
    trainer, summary = run_trainer(cfg, lambda t: poison_on_call(t.method.clip.text, 1))  # step 2's text
    assert (trainer.device_skip is not None) == fused.endswith("true")
    assert summary["nonfinite_steps"] == 1 and summary["step"] == 4
    rows = metrics(cfg.train.output_dir)
    assert [r["step"] for r in rows] == [1, 3, 4] and rows[1]["nonfinite_steps"] == 1
    saved = list_checkpoints(cfg.train.output_dir)
    assert [s for s, _ in saved] == [1, 3, 4]  # the skipped step saved nothing either
    for _, path in saved:
        assert all_finite(load_checkpoint(path)["model"]), path
    final = load_checkpoint(resolve_resume("latest", cfg.train.output_dir))["model"]
    assert int(final["steps_done"]) == 3  # the skipped step made no update
    assert int(final["queue.seen"]) == 3 * 2 * 8  # ...and enqueued none of its NaN text features


def test_nonfinite_stop_raises_a_clear_error_and_saves_nothing_bad(tiny_cfg):
    cfg = tiny_cfg("train.steps=4", "train.ckpt_every=1", "train.nonfinite=stop", "eval.builtin=false")
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss or gradient .* at step 2 and train.nonfinite=stop"):
        run_trainer(cfg, lambda t: poison_on_call(t.method.clip.text, 1))
    assert [s for s, _ in list_checkpoints(cfg.train.output_dir)] == [1]
    assert all_finite(load_checkpoint(resolve_resume("latest", cfg.train.output_dir))["model"])


@SKIP_PATHS
def test_skip_refuses_when_nan_reached_a_buffer(tiny_cfg, fused):
    """NaN image features pass through SimSiam's BatchNorm and poison its running stats: skipping the update
    cannot undo that, so the trainer stops instead of training on and failing every later save."""
    cfg = tiny_cfg("train.steps=4", "train.ckpt_every=1", "eval.builtin=false", fused)
    with pytest.raises(NonFiniteLoss, match="non-finite buffers.*projector"):
        run_trainer(cfg, lambda t: poison_on_call(t.method.clip.visual, 1))
    assert [s for s, _ in list_checkpoints(cfg.train.output_dir)] == [1]
