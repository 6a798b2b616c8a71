"""No stall a loader worker can cause (issue 39): a worker stopped (SIGSTOP) anywhere, mid-handover included, ends
the run within the watchdog (``data.worker_timeout_s``) in one line; a preemption signal during such a stall
still gets the last completed step's checkpoint within 60 s, and the resumed run is the uninterrupted one.

The data source stops its own worker process on a chosen sample: inside the read ("load": before the batch is
sent, what torch's DataLoader timeout covers) or as the worker next hands a batch's shared memory over ("handover":
the trainer has the batch's message and waits in the socket read for a tensor's file descriptor, which no
DataLoader timeout covers; before the watchdog thread, the run hung there for good). Real processes: a stopped
child and the signals need them. Slow (each test runs two or three training processes; the signal test also
waits out the watchdog's 10 s after the signal, which is the behaviour under test).
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from declip.train.checkpoint import list_checkpoints, load_checkpoint
from declip.data.fetch import PREEMPTION_WAIT_S
from helpers import metrics, write_tiny_config

SRC = str(Path(__file__).resolve().parents[1] / "src")
BATCH, STEPS = 8, 8
STOP_AT = 6 * BATCH + 1  # the worker's 49th sample (its 7th batch): a few steps are done before the stall
TIMING_KEYS = {"time", "images_per_s", "data_wait", "step_time_s", "tflops", "mfu"}

STOPPING_SOURCE = """
import multiprocessing.reduction as reduction, os, signal, sys
from declip.data.builtin import BuiltinPairs

at, where = int(sys.argv[1]), sys.argv[2]
load, loads = BuiltinPairs.load, [0]


def stop_self(*_):
    os.kill(os.getpid(), signal.SIGSTOP)


def stopping_load(self, index):
    loads[0] += 1  # counted in the one worker process
    if loads[0] == at:
        if where == "load":
            stop_self()
        else:  # the next time the trainer asks this worker for a tensor's file descriptor, stop first
            send = reduction.send_handle
            reduction.send_handle = lambda *a: (stop_self(), send(*a))
    return load(self, index)


BuiltinPairs.load = stopping_load
from declip.cli import main
sys.exit(main(sys.argv[3:]))
"""


def config(tmp_path: Path, name: str, *extra: str) -> Path:
    return write_tiny_config(tmp_path / f"{name}.yaml", f"train.steps={STEPS}", f"train.output_dir={tmp_path / name}",
                             "data.num_workers=1", "data.pin_memory=false", "eval.builtin=false", *extra)


def launch(tmp_path: Path, cfg: Path, where: str = "", *extra: str) -> subprocess.Popen:
    """``declip train`` in a process group of its own; with ``where``, its worker stops itself at STOP_AT."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    argv = ["train", "--config", str(cfg), *extra]
    if where:
        script = tmp_path / "stopping_source.py"
        script.write_text(STOPPING_SOURCE)
        cmd = [sys.executable, str(script), str(STOP_AT), where, *argv]
    else:
        cmd = [sys.executable, "-m", "declip.cli", *argv]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def stopped_child(pid: int) -> int | None:
    """The pid of a stopped (SIGSTOP) child of ``pid``, if there is one."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if state in ("T", "t") and int(ppid) == pid:
            return int(stat.parent.name)
    return None


def wait_for_stop(proc: subprocess.Popen, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while stopped_child(proc.pid) is None:
        assert proc.poll() is None, "the run ended before its worker stopped:\n" + proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the worker never stopped"
        time.sleep(0.05)
    return time.monotonic()


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # hung: end it and the stopped worker (SIGKILL needs no SIGCONT)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["load", "handover"])
def test_a_stopped_worker_ends_the_run_within_the_watchdog_in_one_line(tmp_path, where):
    if where == "handover":
        needs_fd_handover()
    watchdog = 5
    proc = launch(tmp_path, config(tmp_path, "run", f"data.worker_timeout_s={watchdog}"), where)
    stopped = wait_for_stop(proc)
    out, err = finish(proc, timeout=watchdog + 60)  # before the watchdog thread, "handover" never ended
    waited = time.monotonic() - stopped
    assert proc.returncode == 1, out[-2000:] + err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: no batch from the data-loader workers in 5 s (data.worker_timeout_s"), lines
    assert waited < watchdog + 30, f"the run ended {waited:.0f} s after its worker stopped"
    assert stopped_child(proc.pid) is None and not list_checkpoints(tmp_path / "run")  # no signal: nothing saved


def needs_fd_handover() -> None:
    if torch.multiprocessing.get_sharing_strategy() != "file_descriptor":  # Linux's default
        pytest.skip("batches are handed over through file descriptors only with the file_descriptor strategy")


@pytest.mark.slow
def test_sigterm_during_a_stall_saves_the_last_step_and_the_resume_is_exact(tmp_path):
    needs_fd_handover()
    reference = launch(tmp_path, config(tmp_path, "reference"))
    out, err = finish(reference, timeout=180)
    assert reference.returncode == 0, err[-3000:]

    cfg = config(tmp_path, "run")
    proc = launch(tmp_path, cfg, "handover")  # the default watchdog (300 s): the signal must not wait for it
    wait_for_stop(proc)
    os.killpg(proc.pid, signal.SIGTERM)  # the whole group, as a scheduler does; the stopped worker ignores it
    signalled = time.monotonic()
    out, err = finish(proc, timeout=60)
    waited = time.monotonic() - signalled
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    assert "stopped by signal 15" in out and "within 10 s of the preemption signal" in out, out[-3000:]
    assert PREEMPTION_WAIT_S <= waited < 60, f"exited {waited:.0f} s after SIGTERM"
    (step, path), = list_checkpoints(tmp_path / "run")[-1:]
    logged = [r["step"] for r in metrics(tmp_path / "run")]
    assert 1 <= step < STEPS and logged == list(range(1, step + 1)), "the last completed step, saved"
    assert load_checkpoint(path)["data"]["consumed"] == step * BATCH

    resumed = launch(tmp_path, cfg, "", "--resume", "latest")
    out, err = finish(resumed, timeout=180)
    assert resumed.returncode == 0 and f"at step {step} " in out, out[-2000:] + err[-2000:]
    want, got = metrics(tmp_path / "reference"), metrics(tmp_path / "run")
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for a, b in zip(want, got):
        assert {k: v for k, v in a.items() if k not in TIMING_KEYS} == \
            {k: v for k, v in b.items() if k not in TIMING_KEYS}, f"step {a['step']} differs"
    final_a = load_checkpoint(list_checkpoints(tmp_path / "reference")[-1][1])["model"]
    final_b = load_checkpoint(list_checkpoints(tmp_path / "run")[-1][1])["model"]
    assert final_a.keys() == final_b.keys() and all(torch.equal(final_a[k], final_b[k]) for k in final_a)


# ------------------------------------------------------------------------------ the watchdog itself, in-process
class Stream:
    """An iterator that hangs for good at item ``hang_at`` (a worker stopped mid-handover, as the trainer sees
    it), counting how often it was asked."""

    def __init__(self, hang_at: int = -1):
        self.hang_at, self.asked = hang_at, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.asked += 1
        if self.asked == self.hang_at:
            import threading

            threading.Event().wait()
        if self.asked == 99:
            raise ValueError("a worker's error")
        return self.asked


def test_the_fetch_gives_up_at_the_watchdog_and_keeps_order_and_errors():
    from declip.data.errors import DataStallError
    from declip.data.fetch import BoundedFetch

    fetch = BoundedFetch(Stream(hang_at=4), timeout_s=0.3, sample_timeout_s=0.1, per_step=1,
                         preempted=lambda: False)
    assert [next(fetch) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(DataStallError, match=r"in 0.3 s \(data.worker_timeout_s"):
        next(fetch)
    assert fetch.stalled
    with pytest.raises(DataStallError):  # the thread is still inside the abandoned fetch: no second one
        next(fetch)
    stream = Stream()
    stream.asked = 97
    errors = BoundedFetch(stream, timeout_s=5, sample_timeout_s=1, per_step=1, preempted=lambda: False)
    assert next(errors) == 98
    with pytest.raises(ValueError, match="a worker's error"):  # raised in the caller's thread
        next(errors)
    errors.close()


def test_a_step_fetches_all_its_micro_batches_before_the_first_is_used():
    """With grad_accum micro-batches a wait can only be given up at a step's start, before anything of the step
    ran: the state saved then is exactly the last completed step's."""
    from declip.data.fetch import BoundedFetch

    stream = Stream()
    fetch = BoundedFetch(stream, timeout_s=5, sample_timeout_s=1, per_step=3, preempted=lambda: False)
    assert next(fetch) == 1 and stream.asked == 3
    assert next(fetch) == 2 and next(fetch) == 3 and stream.asked == 3
    assert next(fetch) == 4 and stream.asked == 6
    fetch.close()
    inline = BoundedFetch(Stream(), timeout_s=5, sample_timeout_s=1, per_step=2, preempted=lambda: False,
                          threaded=False)  # data.num_workers=0: no thread, no worker to stop
    assert inline.thread is None and [next(inline) for _ in range(3)] == [1, 2, 3]


def test_a_signal_during_the_wait_gives_up_within_the_preemption_wait(monkeypatch):
    import declip.data.fetch as watchdog

    monkeypatch.setattr(watchdog, "PREEMPTION_WAIT_S", 0.5)
    signalled = []
    fetch = watchdog.BoundedFetch(Stream(hang_at=2), timeout_s=300, sample_timeout_s=60, per_step=1,
                                  preempted=lambda: bool(signalled))
    assert next(fetch) == 1
    signalled.append(True)
    start = time.monotonic()
    with pytest.raises(watchdog.PreemptedWait, match="within 0.5 s of the preemption signal"):
        next(fetch)
    assert time.monotonic() - start < 60, "gave up on the signal, not at the 300 s watchdog"


class HangingImages:
    """An eval image source whose worker hangs for good on image 5 (``load`` runs in the loader worker)."""

    timeout_s, worker_timeout_s = 1.0, 2.0

    def __call__(self, i):
        from PIL import Image

        if i == 5:
            import threading

            threading.Event().wait()
        return Image.new("RGB", (32, 32), (i, 0, 0))


def test_a_stalled_evaluation_worker_ends_in_one_line_too(tiny_cfg):
    """Evaluation's loader (mid-run zero-shot, declip eval) is read the same way: it had no timeout at all."""
    from declip.data.errors import DataStallError
    from declip.data.views import eval_transform_uint8
    from declip.eval.common import EvalImages, image_features
    from declip.models.towers import build_clip

    clip = build_clip(tiny_cfg().model)
    images = EvalImages(HangingImages(), 12, eval_transform_uint8(32))
    with pytest.raises(DataStallError, match=r"in 2 s \(data.worker_timeout_s"):
        image_features(clip, images, "cpu", batch_size=4, num_workers=1)
    feats = image_features(clip, EvalImages(HangingImages(), 5, eval_transform_uint8(32)), "cpu", 4, 1)
    assert feats.index.tolist() == [0, 1, 2, 3, 4]  # a healthy loader runs to its end through the same path
