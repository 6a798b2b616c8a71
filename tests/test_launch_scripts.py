"""The launch scripts' argument handling, through DECLIP_DRY_RUN (prints the torchrun command, runs nothing),
and the sbatch file with stand-in `srun`/`scontrol`. A real 2-process launch is in tests/test_distributed.py."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
CONFIG = "configs/demo.yaml"


def launch(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
                                                              "NPROC_PER_NODE", "MODE")}
    clean.update(DECLIP_DRY_RUN="1", PYTHON="python-under-test", **env)
    return subprocess.run(["bash", str(SCRIPTS / script), *args], cwd=ROOT, env=clean, capture_output=True,
                          text=True, timeout=30)


def command(script: str, *args: str, **env: str) -> list[str]:
    proc = launch(script, *args, **env)
    assert proc.returncode == 0, proc.stderr
    return shlex.split(proc.stdout)


def test_full_1p_command():
    cmd = command("train_full_1p.sh", "--config", CONFIG, "optim.lr=5e-4", "train.steps=10")
    assert cmd[:3] == ["python-under-test", "-m", "torch.distributed.run"]
    i = cmd.index("-m", 1 + cmd.index("torch.distributed.run"))
    assert cmd[3:i] == ["--standalone", "--nproc_per_node", "1"]
    assert cmd[i:] == ["-m", "declip.cli", "train", "--config", CONFIG, "train.mode=full", "optim.lr=5e-4",
                       "train.steps=10"]


def test_performance_scripts_default_1000_steps_user_overrides_last():
    cmd = command("train_performance_1p.sh", f"--config={CONFIG}", "--resume", "latest", "train.steps=50")
    tail = cmd[cmd.index("train"):]
    assert tail == ["train", "--config", CONFIG, "--resume", "latest", "train.mode=performance", "train.steps=1000",
                    "train.output_dir=checkpoint/performance/demo_1p", "train.steps=50"]  # the last key wins
    cmd = command("train_performance_8p.sh", "--config", CONFIG)
    assert cmd[cmd.index("--nproc_per_node") + 1] == "8" and "train.output_dir=checkpoint/performance/demo_8p" in cmd
    cmd = command("train_full_8p.sh", "--config", CONFIG, NPROC_PER_NODE="4")
    assert cmd[cmd.index("--nproc_per_node") + 1] == "4"


def test_single_node_scripts_ignore_multinode_env():
    cmd = command("train_full_8p.sh", "--config", CONFIG, NNODES="4", NODE_RANK="2", MASTER_ADDR="10.1.1.1")
    assert "--standalone" in cmd and "--nnodes" not in cmd


def test_multinode_command_and_errors():
    cmd = command("train_multinode.sh", "--config", CONFIG, "a.b=1", NNODES="4", NODE_RANK="3",
                  MASTER_ADDR="10.1.1.1", MASTER_PORT="12345", NPROC_PER_NODE="2", MODE="performance")
    i = cmd.index("torch.distributed.run") + 1
    assert cmd[i:i + 10] == ["--nnodes", "4", "--node_rank", "3", "--master_addr", "10.1.1.1", "--master_port",
                             "12345", "--nproc_per_node", "2"]
    assert "train.mode=performance" in cmd and "train.output_dir=checkpoint/performance/demo_8p" in cmd
    proc = launch("train_multinode.sh", "--config", CONFIG, NNODES="2", NODE_RANK="0")
    assert proc.returncode == 2 and "needs MASTER_ADDR" in proc.stderr
    proc = launch("train_multinode.sh", "--config", CONFIG, NNODES="2", MASTER_ADDR="h")
    assert proc.returncode == 2 and "needs NODE_RANK" in proc.stderr


@pytest.mark.parametrize("args, message", [
    ((), "--config FILE is required"),
    (("--config", "missing.yaml"), "config file not found: missing.yaml"),
    (("--config", CONFIG, "stray"), "unexpected argument 'stray'"),
    (("--config",), "--config needs a file"),
])
def test_argument_errors(args, message):
    proc = launch("train_full_1p.sh", *args)
    assert proc.returncode == 2 and message in proc.stderr


def test_help():
    proc = launch("train_performance_8p.sh", "--help")
    assert proc.returncode == 0 and "usage: train_performance_8p.sh --config FILE" in proc.stdout


def test_sbatch_with_stand_in_slurm(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "scontrol").write_text('#!/bin/sh\nprintf "gpu07\\ngpu08\\n"\n')
    (bindir / "srun").write_text('#!/bin/sh\necho "MASTER=$MASTER_ADDR:$MASTER_PORT"\nprintf "%s\\n" "$@"\n')
    for f in bindir.iterdir():
        f.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update(PATH=f"{bindir}{os.pathsep}{env['PATH']}", SLURM_JOB_NODELIST="gpu[07-08]", SLURM_JOB_ID="4242",
               SLURM_NTASKS="16", SLURM_JOB_NUM_NODES="2", PYTHON="py")
    proc = subprocess.run(["bash", str(SCRIPTS / "slurm_declip.sbatch"), CONFIG, "train.batch_size=128"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "MASTER=gpu07:24242" in lines
    assert lines[lines.index("MASTER=gpu07:24242") + 1:] == [
        "--kill-on-bad-exit=1", "py", "-m", "declip.cli", "train", "--config", CONFIG, "--resume",
        "latest-or-new", "train.batch_size=128"]
