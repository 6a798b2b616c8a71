"""A run killed with SIGKILL and resumed with ``--resume latest`` must be the uninterrupted run, bit for bit.

Real processes (``python -m declip.cli train``), a data-loader worker process, a kill at a random step after
the first checkpoint (the seed is printed so a failure can be replayed: DECLIP_KILL_SEED=<seed>). What must match
exactly: every logged loss and metric of every step (also after the resume point), and the final checkpoint
(weights, DeCLIP's queue, optimizer moments, RNG states, data position). The metrics file must hold each step
once: the resumed run drops what the killed run logged past its last checkpoint.
"""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from declip.train.checkpoint import list_checkpoints, load_checkpoint
from helpers import last_logged_step, raw_metrics, write_tiny_config

STEPS = 8
# wall-clock values: the only ones allowed to differ
TIMING_KEYS = {"time", "images_per_s", "data_wait", "step_time_s", "tflops", "mfu"}


# a case name's overrides beyond method.name: SLIP trained with the sigmoid loss covers both the SimCLR head and
# the sigmoid loss's own scale and bias (one case instead of two: each costs three processes)
# FILIP with its global term on beside the dense one (its own default trains the dense term alone), so both
# clamped logit scales move and must resume exactly
EXTRA = {"slip+sigmoid": ["method.simclr_hidden_dim=32", "method.simclr_out_dim=16",
                         "method.contrastive_loss=sigmoid"], "filip": ["method.clip_weight=0.4"],
         # fine-tuning (issue 40): a partly locked image tower, per-part lrs and layer decay (own param groups)
         "declip+finetune": ["model.lock_image=true", "model.lock_image_unlocked_groups=2", "optim.text_lr_mult=0.5",
                             "optim.heads_lr_mult=4", "optim.layer_decay=0.8"]}


def write_config(path: Path, out: Path, method: str) -> Path:
    """The tests' tiny config with a data-loader worker process (part of what must resume exactly) and a
    checkpoint every 3 steps, all kept."""
    return write_tiny_config(path, f"method.name={method.split('+')[0]}", *EXTRA.get(method, []),
                             f"train.steps={STEPS}", "train.ckpt_every=3", "train.keep_last=20", "train.device=cpu",
                             f"train.output_dir={out}", "data.num_workers=1", "data.pin_memory=false",
                             "eval.num_workers=0")


def launch(config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "declip.cli", "train", "--config", str(config), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 90) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def kill_after(proc: subprocess.Popen, run: Path, step: int, timeout: float = 90) -> int:
    """SIGKILL once a checkpoint exists and ``step`` has been logged; returns the last step logged then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()[-3000:]
        logged = last_logged_step(run)
        if logged >= step and list_checkpoints(run):
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            assert proc.returncode == -signal.SIGKILL
            return logged
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"step {step} not reached in {timeout} s")


def assert_same_state(a, b, where: str = "") -> None:
    """Recursive bit-for-bit equality of two checkpoint payloads (tensors, numbers, containers)."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["declip", "clip", "slip+sigmoid", "filip", "defilip", "declip+finetune"])
def test_sigkill_then_resume_latest_is_bit_exact(tmp_path, method):
    seed = int(os.environ.get("DECLIP_KILL_SEED", time.time_ns() % 100_000))
    kill_step = random.Random(seed).randint(4, STEPS - 2)  # the first checkpoint is at step 3
    print(f"DECLIP_KILL_SEED={seed}: kill once step {kill_step} is logged")
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    ref_cfg = write_config(tmp_path / "ref.yaml", ref_dir, method)
    run_cfg = write_config(tmp_path / "run.yaml", run_dir, method)

    reference = launch(ref_cfg)  # the uninterrupted run, side by side with the one to be killed
    victim = launch(run_cfg)
    killed_at = kill_after(victim, run_dir, kill_step)
    resumed_from = list_checkpoints(run_dir)[-1][0]
    assert 3 <= resumed_from <= killed_at and resumed_from < STEPS, (resumed_from, killed_at)
    out = finish(launch(run_cfg, "--resume", "latest"))
    assert f"at step {resumed_from} " in out, out[-2000:]
    finish(reference)

    # the files as written, not read_metrics: that keeps one record per step and would hide a step the killed
    # run logged past its checkpoint and the resumed run logged again
    ref_rows, run_rows = raw_metrics(ref_dir), raw_metrics(run_dir)
    assert [r["step"] for r in ref_rows] == list(range(1, STEPS + 1))
    assert [r["step"] for r in run_rows] == list(range(1, STEPS + 1)), "each step logged once after resume"
    for a, b in zip(ref_rows, run_rows):
        assert set(a) == set(b)
        for key in sorted(set(a) - TIMING_KEYS):
            assert a[key] == b[key], \
                f"step {a['step']} {key}: {a[key]!r} != {b[key]!r} (resumed at {resumed_from})"

    final_ref = load_checkpoint(list_checkpoints(ref_dir)[-1][1])
    final_run = load_checkpoint(list_checkpoints(run_dir)[-1][1])
    assert final_ref["step"] == final_run["step"] == STEPS
    if method == "declip":
        assert int(final_run["model"]["queue.seen"]) == STEPS * 2 * 8  # queue continued, not restarted
    for key in ("model", "optimizer", "data", "rng", "best", "step"):
        assert_same_state(final_ref[key], final_run[key], key)
