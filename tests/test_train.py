"""End-to-end runs of the real trainer on tiny towers (CPU, seconds each)."""
import json

import pytest
import torch

from declip.cli import main as cli_main
from declip.config import demo_config_path
from declip.train.checkpoint import list_checkpoints, load_checkpoint
from declip.train.trainer import Trainer, train
from helpers import metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def test_clip_30_steps_loss_falls(tiny_cfg):
    cfg = tiny_cfg("method.name=clip", "train.steps=30", "train.batch_size=16", "optim.lr=2e-3",
                   "eval.builtin=false")
    train(cfg)
    losses = [r["loss"] for r in metrics(cfg.train.output_dir)]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, losses


def test_declip_every_loss_part_falls(tiny_cfg):
    cfg = tiny_cfg("train.steps=40", "train.batch_size=16", "optim.lr=2e-3", "eval.builtin=false",
                   "method.queue_size=128")
    train(cfg)
    rows = metrics(cfg.train.output_dir)
    assert len(rows) == 40
    for part in ("clip_raw", "simsiam_raw", "mlm_raw", "nn_raw"):
        values = [r[part] for r in rows]
        first, last = sum(values[:8]) / 8, sum(values[-8:]) / 8
        assert last < first, (part, first, last)


def test_resume_continues_at_saved_step_with_same_optimizer_state(tiny_cfg):
    cfg = tiny_cfg("train.steps=6", "train.ckpt_every=3", "train.keep_last=5", "eval.builtin=false")
    train(cfg)
    ckpts = dict(list_checkpoints(cfg.train.output_dir))
    assert set(ckpts) == {3, 6}
    state3 = load_checkpoint(ckpts[3])
    trainer = Trainer(cfg, resume=str(ckpts[3]))
    try:
        assert trainer.step == 3 and trainer.consumed == 3 * 8
        opt = trainer.optimizer.state_dict()
        assert len(opt["state"]) == len(state3["optimizer"]["state"]) > 0
        for pid, s in state3["optimizer"]["state"].items():
            assert torch.equal(opt["state"][pid]["exp_avg"], s["exp_avg"])
            assert torch.equal(opt["state"][pid]["exp_avg_sq"], s["exp_avg_sq"])
            assert int(opt["state"][pid]["step"]) == 3
        for k, v in state3["model"].items():
            assert torch.equal(trainer.method.state_dict()[k], v), k
    finally:
        trainer.close()


def test_resume_latest_reaches_the_same_weights(tiny_cfg, tmp_path, monkeypatch):
    straight = tiny_cfg("train.steps=6", "eval.builtin=false", f"train.output_dir={tmp_path / 'a'}")
    train(straight)
    first = tiny_cfg("train.steps=3", "train.ckpt_every=3", "eval.builtin=false",
                     f"train.output_dir={tmp_path / 'b'}")
    train(first)
    resumed = tiny_cfg("train.steps=6", "eval.builtin=false", f"train.output_dir={tmp_path / 'b'}")
    started = []  # the step the resumed trainer starts from: a fresh start would reach the same weights too
    real_train = Trainer.train
    monkeypatch.setattr(Trainer, "train", lambda self: started.append(self.step) or real_train(self))
    train(resumed, resume="latest")
    assert started == [3]
    (step_a, path_a), (step_b, path_b) = list_checkpoints(tmp_path / "a")[-1], list_checkpoints(tmp_path / "b")[-1]
    assert step_a == step_b == 6
    a, b = load_checkpoint(path_a)["model"], load_checkpoint(path_b)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_cli_train_then_eval_reproduces_accuracy(tmp_path, capsys):
    out = tmp_path / "cli"
    # the demo config itself (tiny-rn towers), shortened: what `declip train` runs with no --config
    args = ["train", "--config", str(demo_config_path()), "train.steps=3", "train.batch_size=8",
            "data.num_workers=0", "model.vision.image_size=32", "method.queue_size=64", "train.progress=false",
            "eval.max_images=40", f"train.output_dir={out}"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "zero-shot top-1" in printed and "checkpoint:" in printed
    # the closing block: last zero-shot, best, checkpoint, then the literal commands to run next
    lines = printed.splitlines()
    block = lines[next(i for i, line in enumerate(lines) if line.startswith("== run finished at step 3/3")):]
    assert [line.split()[0] for line in block] == ["==", "last", "best", "checkpoint:", "next:", "declip", "declip"]
    assert block[-2:] == [f"  declip eval --checkpoint {out / 'best.pt'} --brief",
                          f"  declip export {out / 'best.pt'} {out / 'export'}"]
    ckpt = printed.split("checkpoint:")[1].split()[0]
    train_top1 = float(printed.split("held-out images): ")[1].split("%")[0])
    assert cli_main(["eval", "--checkpoint", ckpt]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert abs(evaluated["builtin/top1"] - train_top1) < 0.051 and evaluated["builtin/images"] == 40
