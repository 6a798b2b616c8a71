"""Issue 30 (data side): reads that cannot hang a run, paths that stay in data.root, images refused from their
header, and skips that are named. Every case here hung, read outside the root, decoded in full or said `e.g. []`
before the change."""
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from declip.config import load_config
from declip.data import bounded
from declip.data.csv_source import CsvSource
from declip.data.decode import decode_image
from declip.data.errors import SKIP_REASONS, BadSample, DataStallError
from declip.data.loader import DataSpec, PairDataset
from declip.data.manifest import ManifestSource
from declip.errors import ConfigError, DataQualityError
from declip.eval.common import FileImages
from declip.train.health import LOGGED_PER_REASON, SkipRateGuard
from helpers import tiny_overrides, write_tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True)
def pil_limit(monkeypatch):
    """decode_image sets PIL's process-wide limit to the one it is given: give the other tests theirs back."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


def _png(size=(40, 30), color=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def guarded(tmp_path):
    """A manifest whose lines are: good, a FIFO, a '..' escape, an absolute path, a too-large image."""
    root = tmp_path / "images"
    root.mkdir()
    (root / "good.png").write_bytes(_png())
    (root / "big.png").write_bytes(_png((200, 100)))  # 20,000 px: too_large under max_pixels=10,000
    os.mkfifo(root / "fifo.png")
    (tmp_path / "secret.png").write_bytes(_png())
    names = ["good.png", "fifo.png", "../secret.png", str(tmp_path / "secret.png"), "big.png"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"filename": n, "caption": f"a photo {i}"}) + "\n"
                                for i, n in enumerate(names)))
    return manifest, root, [None, "not_a_file", "outside_root", "outside_root", "too_large"]


def _reason(fn):
    try:
        fn()
    except BadSample as e:
        return e.reason
    return None


def test_fifo_escapes_and_large_images_are_skipped_for_their_reason(guarded):
    manifest, root, want = guarded
    src = ManifestSource(manifest, root, 32, max_pixels=10_000)
    assert [_reason(lambda i=i: src.load(i)) for i in range(len(src))] == want  # the FIFO returns at once
    allowed = ManifestSource(manifest, root, 32, max_pixels=10_000, allow_outside_root=True)
    assert allowed.load(3)[0].size == (40, 30)  # the absolute path is read when the user allows it


def test_csv_and_eval_images_stay_in_their_root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "out.png").write_bytes(_png())
    csv = tmp_path / "d.tsv"
    csv.write_text("filepath\ttitle\n../out.png\ta red square\n")
    assert _reason(lambda: CsvSource(csv, tmp_path / "root").load(0)) == "outside_root"
    cfg = load_config(None, tiny_overrides("data.max_image_pixels=100"))
    images = FileImages(tmp_path / "root", ["../out.png", str(tmp_path / "out.png")], 32, cfg.data, "val.jsonl")
    assert _reason(lambda: images(0)) == "outside_root" and _reason(lambda: images(1)) == "outside_root"
    (tmp_path / "root" / "in.png").write_bytes(_png())
    assert _reason(lambda: FileImages(tmp_path / "root", ["in.png"], 32, cfg.data)(0)) == "too_large"


def test_too_large_is_refused_from_the_header_and_pil_warns_with_our_limit():
    data = _png((120, 100))  # 12,000 px
    with pytest.raises(BadSample, match="too_large: .*120 x 100"):
        decode_image(data, "x.png", max_pixels=10_000)
    assert Image.MAX_IMAGE_PIXELS == 10_000  # PIL's own check uses the same limit
    with pytest.warns(Image.DecompressionBombWarning):  # PIL's warning is no longer silenced
        with pytest.raises(BadSample, match="too_large"):
            decode_image(data, "x.png", max_pixels=10_000)
    with pytest.raises(BadSample, match="too_large"):  # over twice the limit: PIL's own error, same reason
        decode_image(data, "x.png", max_pixels=5_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(data, "x.png", max_pixels=12_000).size == (120, 100)


def test_slow_sample_is_skipped_as_timeout_and_named(guarded, monkeypatch):
    manifest, root, _ = guarded
    src = ManifestSource(manifest, root, 32)
    load = src.load
    monkeypatch.setattr(src, "load", lambda i: time.sleep(3) if i == 0 else load(i))
    ds = PairDataset(src, DataSpec(), image_size=32, sample_timeout_s=0.2)
    s = ds[(0, 0)]
    assert int(s["skips"][SKIP_REASONS.index("timeout")]) >= 1  # (a substitute may be line 1 again)
    assert s["skip_examples"][0].startswith("m.jsonl:1: timeout: ")


def test_reads_that_never_return_stop_with_one_line(monkeypatch):
    monkeypatch.setattr(bounded, "_abandoned", [])  # reads an earlier test gave up on may still be sleeping
    monkeypatch.setattr(bounded, "STALL_GRACE_S", 0.2)  # what the oldest stuck read gets to prove itself slow
    release = threading.Event()
    try:
        for i in range(bounded.MAX_STUCK - 1):
            with pytest.raises(BadSample, match="timeout"):
                bounded.call_bounded(release.wait, 0.05, f"m.jsonl:{i + 1}")
        with pytest.raises(DataStallError) as e:
            bounded.call_bounded(release.wait, 0.05, "m.jsonl:9")
        assert "file system looks hung" in str(e.value) and "m.jsonl:9" in str(e.value)
        assert "\n" not in str(e.value)
    finally:
        release.set()


def test_stop_message_and_log_name_the_skipped_files(caplog):
    guard = SkipRateGuard(0.1, torch.zeros(6, dtype=torch.long))  # an older checkpoint's 6 counts: padded
    skips = torch.zeros(len(SKIP_REASONS), dtype=torch.long)
    skips[0] = 1
    with caplog.at_level(logging.WARNING, logger="declip"):
        for i in range(5):
            guard.add(skips, 10, [f"m.jsonl:{i + 1}: missing_file: /r/{i}.jpg"])
    logged = [r.getMessage() for r in caplog.records if "skipped sample" in r.getMessage()]
    assert len(logged) == LOGGED_PER_REASON and "m.jsonl:1: missing_file" in logged[0]
    assert "further missing_file skips are counted, not logged" in logged[-1]
    with pytest.raises(DataQualityError) as e:
        guard.add(skips * 100, 100, [])  # the batch that crosses the limit carries no example of its own
    msg = str(e.value)
    assert "e.g. []" not in msg and "m.jsonl:1: missing_file: /r/0.jpg" in msg and "m.jsonl:5:" in msg


def test_new_keys_are_validated():
    for bad in ("data.sample_timeout_s=0", "data.max_image_pixels=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, tiny_overrides(bad))


def _cli(*args, timeout=60):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "declip.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_data_check_reports_fifo_escapes_and_large_images(guarded, tmp_path):
    manifest, root, _ = guarded
    r = _cli("data", "check", str(manifest), "--root", str(root), "--max-image-pixels", "10000",
             "--timeout", "5", "--no-progress")
    assert r.returncode == 1, r.stderr
    for reason, n in (("not_a_file", 1), ("outside_root", 2), ("too_large", 1)):
        assert f"  {reason}: {n}" in r.stdout, r.stdout
    assert "m.jsonl:2" in r.stdout and "m.jsonl:3" in r.stdout
    missing = _cli("data", "check", str(manifest), "--root", str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().count("\n") == 0 and "does not exist" in missing.stderr, missing.stderr


def test_training_skips_a_fifo(guarded, tiny_cfg):
    from declip.train.trainer import train

    manifest, root, _ = guarded
    cfg = tiny_cfg("data.source=manifest", f"data.path={manifest}", f"data.root={root}", "data.max_skip_rate=1",
                   "train.steps=2", "eval.builtin=false", "data.num_workers=1", "data.pin_memory=false",
                   "data.sample_timeout_s=5")
    summary = train(cfg)
    assert summary["step"] == 2 and summary["skips"]["not_a_file"] > 0 and summary["skips"]["outside_root"] > 0


def test_stalled_worker_with_a_pending_signal_saves_then_stops(tiny_cfg, monkeypatch):
    """A worker that stops making progress (here: outside any bounded read) is detected by the loader's timeout;
    a preemption signal that came before still gets its checkpoint."""
    import declip.data.loader as loader
    from declip.train.checkpoint import list_checkpoints, load_checkpoint
    from declip.train.trainer import Trainer

    monkeypatch.setattr(loader, "call_bounded", lambda fn, t, where: time.sleep(3600))  # forked into the worker
    cfg = tiny_cfg("data.num_workers=1", "data.pin_memory=false", "eval.builtin=false", "data.worker_timeout_s=3")
    trainer = Trainer(cfg)
    try:
        trainer.preemption.signum = signal.SIGTERM
        with pytest.raises(DataStallError, match="worker stopped making progress"):
            trainer.train()
    finally:
        trainer.close()
    (step, path), = list_checkpoints(Path(cfg.train.output_dir))
    assert step == 0 and load_checkpoint(path)["data"]["consumed"] == 0


STALL_SCRIPT = """
import os, sys, threading
import declip.data.decode as decode, declip.data.manifest as manifest
read = decode.read_image_bytes
def stalled(path, *args):  # a hung mount: once the flag exists, every read blocks forever
    if os.path.exists(sys.argv[1]):
        threading.Event().wait()
    return read(path, *args)
decode.read_image_bytes = manifest.read_image_bytes = stalled  # the source's fetch reads through its own name
from declip.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_sigterm_during_a_stalled_read_exits_in_bounded_time(tmp_path):
    from helpers import last_logged_step

    root = tmp_path / "images"
    root.mkdir()
    (root / "a.png").write_bytes(_png())
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"filename": "a.png", "caption": f"red {i}"}) + "\n" for i in range(64)))
    run, flag = tmp_path / "run", tmp_path / "stall"
    config = write_tiny_config(tmp_path / "c.yaml", "train.steps=100000", f"train.output_dir={run}",
                               "data.source=manifest", f"data.path={manifest}", f"data.root={root}",
                               "data.num_workers=1", "data.pin_memory=false", "eval.builtin=false",
                               "data.sample_timeout_s=0.5")
    script = tmp_path / "stall.py"
    script.write_text(STALL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(flag), "train", "--config", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while last_logged_step(run) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.05)
        flag.touch()
        time.sleep(1.0)  # the worker is now in a read that never returns
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)  # before the change: never (the read blocks forever)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "saving a checkpoint" in out, out[-3000:]
    assert list((run).glob("ckpt_*.pt")), out[-3000:]  # the preempted job still saved
    assert proc.returncode in (0, 1), out[-3000:]
    if proc.returncode == 1:  # stopped on the hung mount: one line says so
        assert "error: " in out and "file system looks hung" in out, out[-3000:]
