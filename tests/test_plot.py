"""Observability: TensorBoard scalars of a real run, the metrics file after a resume, ``declip plot``."""
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from declip.cli import main as cli_main
from declip.plot import plot_run
from declip.train.metrics import MetricsWriter, read_metrics
from declip.train.trainer import train
from helpers import raw_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


def scalars(run, tag):
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else None


def test_run_logs_every_part_to_tensorboard_and_plots(tiny_cfg, tmp_path):
    cfg = tiny_cfg("train.steps=3", "train.tensorboard=true")
    train(cfg)
    run = tmp_path / "run"
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/loss/clip", "train/loss/simsiam", "train/loss/mlm", "train/loss/nn",
                "train/lr", "train/logit_scale", "train/images_per_s", "train/skipped_samples",
                "train/nonfinite_steps", "train/data_wait", "eval/builtin/top1", "eval/builtin/top5"):
        assert tag in tags, (tag, sorted(tags))
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]

    png = plot_run(run)
    assert png == run / "curves.png" and png.read_bytes()[:8] == PNG_MAGIC
    from PIL import Image

    with Image.open(png) as im:
        assert im.width > 800 and im.height > 300
    assert cli_main(["plot", str(run), "--out", str(tmp_path / "c" / "curves.png")]) == 0
    assert (tmp_path / "c" / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_resumed_writer_drops_what_the_killed_run_logged_past_the_checkpoint(tmp_path):
    first = MetricsWriter(tmp_path, tensorboard=True)
    for step in range(1, 6):
        first.write(step, {"loss": 1.0})
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 6, "lo')  # SIGKILL in the middle of a line
    second = MetricsWriter(tmp_path, tensorboard=True, resume_step=3)  # resumed from the step-3 checkpoint
    for step in (4, 5):
        second.write(step, {"loss": 2.0})
    second.close()

    raw = raw_metrics(tmp_path)  # the file as written, not read_metrics: that would hide a duplicate step
    assert [(r["step"], r["loss"]) for r in raw] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0), (5, 2.0)]
    assert scalars(tmp_path, "train/loss") == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0), (5, 2.0)]


def test_reader_keeps_the_last_record_per_step_and_plot_errors(tmp_path):
    lines = [{"kind": "train", "step": s, "loss": v, "time": t}
             for t, (s, v) in enumerate([(1, 5.0), (2, 4.0), (3, 3.0), (2, 9.0), (3, 8.0)])]
    lines.append({"kind": "eval", "step": 3, "builtin/top1": 12.5})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + "{broken\n")
    rows = read_metrics(tmp_path)
    assert [(r["kind"], r["step"], r.get("loss")) for r in rows] == [
        ("train", 1, 5.0), ("train", 2, 9.0), ("train", 3, 8.0), ("eval", 3, None)]
    assert plot_run(tmp_path, tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(FileNotFoundError, match="metrics"):
        plot_run(tmp_path / "missing")
