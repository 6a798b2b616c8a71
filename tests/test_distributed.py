"""Distributed training on the CPU with gloo: 2 processes must train exactly like 1 process on the whole batch.

The key check (tests/dist_worker.py explains why each case is exact): for CLIP, CLIP with local loss, two DeCLIP
variants, CLIP and DeCLIP with the sigmoid loss, and SLIP, the mean over ranks of the per-rank loss equals the
single-process loss on the concatenated batch, and every parameter's gradient (after DDP's average) equals the
single-process gradient. The two workers are launched the way srun launches them (SLURM_* variables, no
MASTER_ADDR; a stand-in `scontrol` names the first host), which also covers the SLURM rendezvous. A torchrun
launch of `declip train` with 2 processes then trains, checkpoints, resumes, and prints FPS in performance mode.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from declip import distributed as dist
from dist_worker import CASES, PER_RANK, build_case, make_batch, rows, run_step
from helpers import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("dist_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") and not k.startswith("SLURM")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{env.get('PYTHONPATH', '')}", **extra)
    if sys.platform.startswith("linux"):  # gloo binds to the host name's address, which a CI box may not resolve
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


# ------------------------------------------------------------------------ the equality check (2 ranks)
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Launch 2 worker ranks (as srun would), compute the single-process references meanwhile."""
    out = tmp_path_factory.mktemp("dist")
    bindir = out / "bin"
    bindir.mkdir()
    scontrol = bindir / "scontrol"  # the stand-in: `scontrol show hostnames LIST` -> one host per line
    scontrol.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "localhost\\nnode2\\n"\n')
    scontrol.chmod(0o755)
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = child_env(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID="0", SLURM_NNODES="2",
                        SLURM_JOB_NODELIST="fake[1-2]", MASTER_PORT=port,
                        PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out)], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    reference = {}
    for name in CASES:
        reference[name] = single_process_reference(name)
    for p in procs:
        log, _ = p.communicate(timeout=180)
        assert p.returncode == 0, log[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return reference, ranks


def single_process_reference(name: str) -> dict:
    cfg, method, model = build_case(name)
    full = make_batch(cfg, 2 * PER_RANK)
    if not cfg.method.local_loss:
        return run_step(method, model, full)
    # local loss: each rank's loss sees only its own rows; the reference is the mean of the two halves
    halves = []
    for r in range(2):
        method.zero_grad(set_to_none=True)
        halves.append(run_step(method, model, rows(full, r * PER_RANK, (r + 1) * PER_RANK)))
    return {"loss": sum(h["loss"] for h in halves) / 2, "trainable": halves[0]["trainable"],
            "grads": {k: (halves[0]["grads"][k] + halves[1]["grads"][k]) / 2 for k in halves[0]["grads"]}}


def test_slurm_rendezvous_found_first_host(two_ranks):
    _, ranks = two_ranks
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["master_addr"] == "localhost" for r in ranks)
    assert [r["any_rank"] for r in ranks] == [[True, False, True]] * 2  # rank 1's flag reaches rank 0


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_one_process(two_ranks, name):
    reference, ranks = two_ranks
    ref = reference[name]
    per_rank = [r[name] for r in ranks]
    mean_loss = sum(r["loss"] for r in per_rank) / 2
    assert mean_loss == pytest.approx(ref["loss"], rel=1e-5, abs=1e-6)
    # not a trivial pass: the two ranks' own losses differ (different rows), only their mean matches
    assert abs(per_rank[0]["loss"] - per_rank[1]["loss"]) > 1e-4
    # every trainable parameter received a gradient on every side, and they agree
    assert set(ref["grads"]) == set(ref["trainable"])
    for r in per_rank:
        assert set(r["grads"]) == set(ref["grads"])
        for k, g in ref["grads"].items():
            tol = 1e-4 * float(g.abs().max()) + 1e-7
            torch.testing.assert_close(r["grads"][k], g, rtol=1e-3, atol=tol, msg=lambda m, k=k: f"{name} {k}: {m}")


def test_declip_cases_cover_every_branch(two_ranks):
    reference, _ = two_ranks
    assert set(reference["declip_all_bn_eval"]["parts"]) == {"clip", "simsiam", "mlm", "nn"}
    assert set(reference["declip_no_simsiam"]["parts"]) == {"clip", "mlm", "nn"}
    assert set(reference["declip_sigmoid_no_simsiam"]["parts"]) == {"clip", "mlm", "nn"}
    assert set(reference["slip_head_bn_eval"]["parts"]) == {"clip", "simclr"}
    # the sigmoid cases train the loss's own scale and bias, not the towers' scale
    assert {"contrastive.logit_scale", "contrastive.logit_bias"} <= set(reference["clip_sigmoid"]["grads"])
    assert "clip.logit_scale" not in reference["clip_sigmoid"]["trainable"]
    assert set(reference["filip"]["parts"]) == {"clip", "filip"}
    assert set(reference["defilip"]["parts"]) == {"clip", "mlm", "nn", "filip"}


def test_locked_towers_train_in_ddp(two_ranks):
    """A locked tower's parameters are in no DDP bucket: a second step runs (DDP would stop it with "Expected to
    have finished reduction" had a bucketed parameter gone without a gradient) and no rank has a gradient for
    them, while the heads on the locked image tower (SimSiam) and the unlocked text projection train."""
    reference, ranks = two_ranks
    for r in ranks:
        image = r["declip_lock_image"]
        assert "second_loss" in image and not any(k.startswith("clip.visual.") for k in image["grads"])
        assert any(k.startswith("projector.") for k in image["grads"])
        text = [k for k in r["slip_lock_text"]["grads"] if k.startswith("clip.text.")]
        assert "second_loss" in r["slip_lock_text"] and sorted(text) == ["clip.text.text_projection.bias",
                                                                         "clip.text.text_projection.weight"]
    assert not any(k.startswith("clip.visual.") for k in reference["declip_lock_image"]["trainable"])


# ------------------------------------------------------------------------------ launch environment
def test_env_dist_info_prefers_torchrun_over_slurm():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}
    assert dist.env_dist_info(env) == dist.DistInfo(3, 8, 1)
    assert dist.env_dist_info({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}) == \
        dist.DistInfo(5, 8, 1)
    assert dist.env_dist_info({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == dist.DistInfo()
    assert dist.env_dist_info({}) == dist.DistInfo()


def test_rendezvous_env_slurm(monkeypatch):
    monkeypatch.setattr(dist.shutil, "which", lambda name: None)  # no scontrol on this machine
    one_node = {"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_NNODES": "1", "SLURM_JOB_ID": "123456"}
    assert dist.rendezvous_env(one_node) == ("127.0.0.1", str(20000 + 123456 % 20000))
    given = {"SLURM_PROCID": "1", "SLURM_NNODES": "4", "MASTER_ADDR": "n7", "MASTER_PORT": "1234"}
    assert dist.rendezvous_env(given) == ("n7", "1234")
    with pytest.raises(dist.LaunchError, match="MASTER_ADDR.*scontrol"):
        dist.rendezvous_env({"SLURM_PROCID": "1", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[01-02]"})
    assert dist.rendezvous_env({"RANK": "0", "WORLD_SIZE": "2"}) == ("127.0.0.1", "29500")


# --------------------------------------------------------------- declip train under torchrun (2 ranks)
TINY_RUN = tiny_overrides(small=True)  # the tests' tiny config as command-line overrides


def _run(cmd: list[str], **env: str) -> str:
    proc = subprocess.run(cmd, env=child_env(**env), cwd=ROOT, capture_output=True, text=True, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


def _torchrun_train(out: Path, *args: str, resume: bool = False) -> str:
    return _run([*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "declip.cli", "train",
                 *(["--resume", "latest"] if resume else []), *TINY_RUN, f"train.output_dir={out}", *args])


def test_torchrun_two_processes_train_checkpoint_resume_performance(tmp_path):
    out = tmp_path / "run"
    log = _torchrun_train(out, "train.steps=2")
    assert "world=2" in log and "eval @ step 2" in log
    first = sorted(out.glob("ckpt_*.pt"))
    assert [p.name for p in first] == ["ckpt_00000002.pt"]
    state = torch.load(first[0], weights_only=True)
    assert len(state["rng"]) == 2 and state["data"]["consumed"] == 8  # both ranks' RNG; 2 steps x 4 rows
    assert log.count("checkpoint: ") == 2  # the trainer's log line and the CLI's, both from rank 0 alone

    log = _torchrun_train(out, "train.steps=3", resume=True)
    assert "resumed from" in log and "at step 2" in log
    assert (out / "ckpt_00000003.pt").is_file()
    assert torch.load(out / "ckpt_00000003.pt", weights_only=True)["data"]["consumed"] == 12

    # performance mode through the seed-named launch script, 2 processes on this node; with the fused optimizer,
    # so the non-finite skip is decided on the device and its flag all-reduced there, as on CUDA
    perf = tmp_path / "perf"
    log = _run(["bash", str(ROOT / "scripts" / "train_performance_8p.sh"), "--config", "configs/demo.yaml",
                *TINY_RUN, "train.steps=2", f"train.output_dir={perf}", "optim.fused=true"], NPROC_PER_NODE="2",
               PYTHON=sys.executable)
    assert "world=2" in log and "performance: FPS" in log and "global batch 8" in log
    assert not list(perf.glob("ckpt_*.pt")) and not (perf / "best.pt").exists()  # no checkpoint, no evaluation
    assert "zero-shot" not in log
