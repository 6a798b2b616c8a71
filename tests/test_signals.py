"""Preemption: SIGUSR1 / SIGTERM make a real ``declip train`` process finish its step, write a checkpoint and
exit 0; that checkpoint loads (weights_only) and ``--resume latest`` continues from it.

SIGUSR1 goes to the trainer alone (SLURM's ``--signal=USR1@T``); SIGTERM goes to the whole process group,
data-loader worker included (what SLURM and Kubernetes do on preemption): the worker must not die before the
trainer has saved.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from declip.train.checkpoint import list_checkpoints, load_checkpoint, resolve_resume
from helpers import last_logged_step, raw_metrics, write_tiny_config


def write_config(path: Path, out: Path) -> Path:
    """The tests' tiny config, running until signalled, with a data-loader worker process (SIGTERM reaches it
    too)."""
    return write_tiny_config(path, "train.steps=100000", "train.device=cpu", f"train.output_dir={out}",
                             "data.num_workers=1", "data.pin_memory=false", "eval.builtin=false")


def launch(config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "declip.cli", "train", "--config", str(config), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, so killpg reaches only it


def signal_after(proc: subprocess.Popen, run: Path, step: int, sig: int, group: bool) -> str:
    deadline = time.monotonic() + 90
    while last_logged_step(run) < step:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, f"step {step} not reached"
        time.sleep(0.02)
    (os.killpg if group else os.kill)(proc.pid, sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode} after signal {sig}:\n{out[-3000:]}"
    assert f"stopped by signal {int(sig)}" in out, out[-3000:]
    return out


def check_saved(run: Path) -> int:
    """The checkpoint is the last logged step's, loads with weights_only=True, and is what 'latest' picks."""
    steps = [r["step"] for r in raw_metrics(run)]  # as written: read_metrics would hide a step logged twice
    assert steps == list(range(1, steps[-1] + 1)), "every step logged exactly once"
    (step, path), = list_checkpoints(run)[-1:]
    assert step == steps[-1], "the checkpoint is taken at the end of the step that was running"
    state = load_checkpoint(path)
    assert state["step"] == step and state["data"]["consumed"] == step * 8
    assert resolve_resume("latest", run) == path
    assert not list(run.glob(".*.tmp.*")), "no half-written file left behind"
    assert not raw_metrics(run, kind="summary"), "a stopped run writes no summary (it would sit mid-file)"
    return step


@pytest.mark.slow
def test_sigusr1_then_sigterm_save_and_resume(tmp_path):
    run = tmp_path / "run"
    config = write_config(tmp_path / "tiny.yaml", run)

    signal_after(launch(config), run, 2, signal.SIGUSR1, group=False)
    first = check_saved(run)
    assert first >= 2

    out = signal_after(launch(config, "--resume", "latest"), run, first + 2, signal.SIGTERM, group=True)
    assert f"at step {first} " in out, out[-2000:]
    second = check_saved(run)
    assert second >= first + 2


def test_another_ranks_signal_stops_this_rank_without_claiming_it(monkeypatch):
    """Only the flag crosses ranks: a rank that got no signal stops too, marked -1 (it runs no final eval/save),
    and the process's own handlers come back after the run."""
    import declip.train.preemption as preemption

    before = signal.getsignal(signal.SIGTERM)
    signals = preemption.PreemptionSignals()
    signals.install()
    assert signal.getsignal(signal.SIGTERM) != before
    monkeypatch.setattr(preemption.dist, "any_rank", lambda flag: True)  # rank 1 was signalled
    assert not signals.requested and signals.agreed(world_size=1) is False  # alone: only its own signal counts
    assert signals.agreed(world_size=2) is True and signals.signum == -1
    signals.restore()
    assert signal.getsignal(signal.SIGTERM) == before
