"""One run per output folder (issue 30, point 1): the lock names its holder, dies with it, and a checkpoint
save of one run never deletes another live run's temp file."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from helpers import TINY, last_logged_step
from declip.errors import RunDirError
from declip.train.checkpoint import list_checkpoints, remove_stale_tmp
from declip.train.run_lock import LOCK_NAME, RunLock
from declip.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")
DEADLINE_S = 180  # a loaded 2-core machine; only a hang gets near it


def test_second_lock_names_the_holder_until_released(tmp_path):
    first = RunLock(tmp_path / "run").acquire()
    info = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    with pytest.raises(RunDirError, match=rf"train.output_dir=.*run is in use by another run \(pid {os.getpid()} "
                                          rf"on host {socket.gethostname()}, started {info['started']}\)"):
        RunLock(tmp_path / "run").acquire()
    first.release()
    first.release()  # idempotent
    RunLock(tmp_path / "run").acquire().release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from declip.train.run_lock import RunLock; "
                               f"RunLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"pid {holder.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: no cleanup runs
        holder.wait()
    RunLock(tmp_path).acquire().release()


def test_resume_into_a_locked_folder_is_refused_before_anything_is_opened(tiny_cfg):
    cfg = tiny_cfg("method.name=clip", "eval.builtin=false")
    lock = RunLock(cfg.train.output_dir).acquire()
    try:
        for resume in (None, "latest", "latest-or-new"):
            with pytest.raises(RunDirError, match=f"in use by another run \\(pid {os.getpid()} "):
                train(cfg, resume=resume)
    finally:
        lock.release()
    run = lock.path.parent
    assert [p.name for p in run.iterdir()] == [LOCK_NAME], "no train.log, no metrics"
    assert train(cfg)["step"] == 4 and list_checkpoints(run)  # free again once the holder let go


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_tmp_cleanup_touches_only_files_of_dead_writers_on_this_host(tmp_path):
    host, live, dead = socket.gethostname(), os.getppid(), _dead_pid()
    names = {"live": f".ckpt_00000004.pt.tmp.{host}.{live}", "dead": f".ckpt_00000004.pt.tmp.{host}.{dead}",
             "legacy_dead": f".best.pt.tmp.{dead}", "legacy_live": f".best.pt.tmp.{live}",
             "other_host": f".ckpt_00000004.pt.tmp.elsewhere.example.org.{dead}"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"half a zip")
    remove_stale_tmp(tmp_path)
    left = {k for k, name in names.items() if (tmp_path / name).exists()}
    assert left == {"live", "legacy_live", "other_host"}


def test_two_runs_started_together_into_one_folder_one_trains_one_exits_naming_it(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "declip.cli", "train", *TINY, f"train.output_dir={tmp_path / 'run'}",
           "train.steps=100000", "method.name=clip", "eval.builtin=false"]
    errs = [tmp_path / f"stderr{i}.txt" for i in range(2)]  # files, not pipes: a full pipe would stall a run
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(e, "w")) for e in errs]
    stderr = {p: e for p, e in zip(procs, errs)}
    try:
        t0 = time.monotonic()
        while all(p.poll() is None for p in procs):
            assert time.monotonic() - t0 < DEADLINE_S, "neither run exited: the second one was not refused"
            time.sleep(0.2)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        err = stderr[loser].read_text().strip().splitlines()
        assert loser.returncode == 1 and len(err) == 1, err
        assert f"is in use by another run (pid {winner.pid} on host {socket.gethostname()}, started " in err[0]
        assert "choose another train.output_dir" in err[0]
        while last_logged_step(tmp_path / "run") < 2:  # the winner trains on, undisturbed
            assert winner.poll() is None, stderr[winner].read_text()
            assert time.monotonic() - t0 < DEADLINE_S, "the remaining run does not train"
            time.sleep(0.2)
        winner.send_signal(signal.SIGTERM)  # saves a checkpoint and exits
        assert winner.wait(DEADLINE_S) == 0, stderr[winner].read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    (step, path), = list_checkpoints(tmp_path / "run")
    assert step >= 2 and torch.load(path, weights_only=True)["step"] == step
