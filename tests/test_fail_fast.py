"""Fail fast and loud: every fatal error ends the process (loader workers included) within seconds, with one
line that names the problem; nothing is silently resumed, overwritten or evaluated while broken."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import TINY
from declip.cli import main as cli_main
from declip.data.errors import SKIP_REASONS
from declip.errors import CheckpointError, DataError, NonFiniteError, RunDirError
from declip.train.checkpoint import list_checkpoints, load_checkpoint
from declip.train.health import NonFiniteGuard, SkipRateGuard, nonfinite_buffers
from declip.train.trainer import train

HANG_LIMIT_S = 120  # generous for a loaded 2-core machine; a hung process never exits at all

NAN_LOSS = """
import sys
import declip.methods.clip as clip
real = clip.CLIP.forward
def nan_forward(self, batch):
    losses, metrics = real(self, batch)
    return {k: v * float("nan") for k, v in losses.items()}, metrics
clip.CLIP.forward = nan_forward
from declip.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_cli(tmp_path, *args, script=None, timeout=HANG_LIMIT_S):
    """``declip train`` in a subprocess with two real loader workers; fails the test if it does not exit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    head = ["-c", script] if script else ["-m", "declip.cli"]
    cmd = [sys.executable, *head, "train", *TINY, f"train.output_dir={tmp_path / 'run'}", "data.num_workers=2",
           "train.device=cpu", *args]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the process hung for {timeout} s after: {(e.stdout or b'')[-2000:]!r}")
    return proc, time.monotonic() - t0


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("error:", "config error:"))]


def bad_manifest(tmp_path, n_good=40, n_bad=40) -> tuple[Path, Path]:
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir()
    lines = []
    for i in range(n_good):
        Image.new("RGB", (40, 40), (i * 5 % 255, 80, 160)).save(root / f"{i}.jpg")
        lines.append({"filename": f"{i}.jpg", "caption": f"a blue square number {i}"})
    lines += [{"filename": f"missing{i}.jpg", "caption": "gone"} for i in range(n_bad)]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return manifest, root


# ------------------------------------------------------------------------------- 1. no hung process
@pytest.mark.slow
def test_bad_data_stop_exits_with_workers(tmp_path):
    manifest, root = bad_manifest(tmp_path)
    proc, seconds = run_cli(tmp_path, "data.source=manifest", f"data.path={manifest}", f"data.root={root}",
                            "train.steps=100", "data.max_skip_rate=0.05")
    assert proc.returncode == 1, proc.stderr[-2000:]
    (line,) = error_lines(proc.stderr) or [proc.stderr[-3000:]]
    assert "unusable" in line and "missing_file" in line and "max_skip_rate" in line
    assert "Traceback" not in proc.stderr
    assert "unusable" in (tmp_path / "run" / "train.log").read_text()  # the fatal error reaches the log too


@pytest.mark.slow
def test_nonfinite_stop_exits_with_workers(tmp_path):
    proc, _ = run_cli(tmp_path, "method.name=clip", "train.nonfinite=stop", "train.progress=true", script=NAN_LOSS)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "\r" not in proc.stderr + proc.stdout  # asked for, but stderr is a pipe: no progress bar drawn into it
    (line,) = error_lines(proc.stderr) or [proc.stderr[-3000:]]
    assert "non-finite" in line and "step 1" in line and "no checkpoint written yet" in line


@pytest.mark.slow
def test_missing_eval_file_fails_at_start(tmp_path):
    proc, _ = run_cli(tmp_path, f"eval.val_manifest={tmp_path / 'nope.jsonl'}", f"eval.val_root={tmp_path}")
    assert proc.returncode == 1
    (line,) = error_lines(proc.stderr) or [proc.stderr[-3000:]]
    assert "eval.val_manifest" in line and "nope.jsonl" in line
    assert not list_checkpoints(tmp_path / "run")


def _foreground_sigint() -> None:
    """SIGINT as a terminal's foreground job has it. A test run launched as a background job of a script
    (``cmd &``) inherits SIGINT *ignored*, and Python then installs no KeyboardInterrupt handler: Ctrl-C could
    not reach the run at all, which is the shell's doing, not declip's."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_ends_the_run_with_workers(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "declip.cli", "train", *TINY, f"train.output_dir={tmp_path / 'run'}",
           "data.num_workers=2", "train.steps=100000", "train.device=cpu", "eval.builtin=false"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_foreground_sigint)
    deadline = time.monotonic() + HANG_LIMIT_S
    metrics = tmp_path / "run" / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group, workers included
    try:
        _, err = proc.communicate(timeout=HANG_LIMIT_S)  # a hang never ends; load only slows
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"Ctrl-C did not end the run; its stderr ended with: {proc.communicate()[1][-2000:]}")
    assert proc.returncode == 130 and "interrupted" in err


# --------------------------------------------------------------------------------- 2. non-finite
@pytest.mark.parametrize("fused", ["optim.fused=false", "optim.fused=true"])  # host / device skip
def test_inf_counts_and_consecutive_skips_stop_naming_the_checkpoint(tiny_cfg, tmp_path, fused):
    cfg = tiny_cfg("method.name=clip", "train.steps=20", "train.ckpt_every=2", "train.max_nonfinite_skips=2",
                   "eval.builtin=false", "train.log_every=5", fused)
    from declip.methods.clip import CLIP

    real = CLIP.forward
    calls = {"n": 0}

    def inf_after_three(self, batch):
        losses, metrics = real(self, batch)
        calls["n"] += 1
        return ({k: v * float("inf") for k, v in losses.items()} if calls["n"] > 3 else losses), metrics

    CLIP.forward = inf_after_three
    try:
        with pytest.raises(NonFiniteError, match=r"at step 6: 3 steps in a row skipped .*ckpt_00000002.pt"):
            train(cfg)
    finally:
        CLIP.forward = real


def test_guard_units():
    bn = torch.nn.BatchNorm1d(3)
    assert nonfinite_buffers(bn) == []
    bn.running_var[1] = float("inf")
    assert nonfinite_buffers(bn) == ["running_var"]
    guard = NonFiniteGuard("skip", max_consecutive=1)
    with pytest.raises(NonFiniteError, match="buffers"):
        guard.skipped(5, "non-finite loss", bn, None)
    guard = NonFiniteGuard("skip", max_consecutive=1)
    guard.skipped(5, "x", torch.nn.Linear(1, 1), None)
    guard.ok()
    guard.skipped(7, "x", torch.nn.Linear(1, 1), None)  # not consecutive: a skip is allowed again
    with pytest.raises(NonFiniteError, match="2 steps in a row"):
        guard.skipped(8, "x", torch.nn.Linear(1, 1), Path("ckpt_00000006.pt"))
    skips = SkipRateGuard(0.1)
    first = torch.zeros(len(SKIP_REASONS), dtype=torch.long)
    first[SKIP_REASONS.index("missing_file")] = 5
    skips.add(first, consumed=100)  # too few seen to judge
    with pytest.raises(Exception, match=r"25 of 220 samples unusable.*missing_file': 25"):
        skips.add(first * 4, consumed=195)


# -------------------------------------------------------------------------- 3/4. resume and run dir
def test_resume_refuses_changed_config_and_keeps_the_old_one(tiny_cfg):
    cfg = tiny_cfg("method.name=clip", "train.steps=2", "train.ckpt_every=2", "eval.builtin=false")
    train(cfg)
    out = Path(cfg.train.output_dir)
    more = tiny_cfg("method.name=clip", "train.steps=4", "train.ckpt_every=2", "eval.builtin=false",
                    "optim.lr=5e-4")
    with pytest.raises(CheckpointError, match=r"changed config \(optim.lr: 0.001 -> 0.0005\).*--allow-config"):
        train(more, resume="latest")
    wider = tiny_cfg("method.name=clip", "train.steps=4", "eval.builtin=false", "model.embed_dim=32")
    with pytest.raises(CheckpointError, match=r"model/method shape \(model.embed_dim: 64 -> 32\)"):
        train(wider, resume="latest")
    summary = train(more, resume="latest", allow_config_change=True)
    assert summary["step"] == 4
    assert "lr: 0.001" in (out / "config.2.yaml").read_text() and "lr: 0.0005" in (out / "config.yaml").read_text()


def test_fresh_run_into_a_used_folder_and_resume_without_checkpoint(tiny_cfg):
    cfg = tiny_cfg("method.name=clip", "train.steps=2", "eval.builtin=false")
    with pytest.raises(RunDirError, match="no checkpoint.*latest-or-new"):
        train(cfg, resume="latest")
    assert train(cfg, resume="latest-or-new")["step"] == 2
    with pytest.raises(RunDirError, match="already holds a run.*--overwrite"):
        train(cfg)
    assert train(cfg, overwrite=True)["step"] == 2
    assert [s for s, _ in list_checkpoints(cfg.train.output_dir)] == [2]


# ------------------------------------------------------------------------- 5. paths before the model
def test_paths_are_checked_before_the_model_is_built(tiny_cfg, tmp_path, monkeypatch):
    import declip.train.trainer as trainer

    monkeypatch.setattr(trainer, "build_method", lambda cfg: pytest.fail("model built before the path check"))
    manifest, _ = bad_manifest(tmp_path)
    with pytest.raises(DataError, match="data.root not found"):
        train(tiny_cfg("data.source=manifest", f"data.path={manifest}", f"data.root={tmp_path / 'no'}"))
    with pytest.raises(DataError, match="eval.val_root: folder not found"):
        train(tiny_cfg(f"eval.val_manifest={manifest}", f"eval.val_root={tmp_path / 'no'}"))


# ---------------------------------------------------------------------------- 6/7. one clear line
def one_line_error(capsys, *argv, code=1) -> str:
    assert cli_main(list(argv)) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_errors_are_one_line(tmp_path, capsys):
    run = f"train.output_dir={tmp_path / 'run'}"
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "t.csv").write_text("a\tb\nx\ty\n")
    (tmp_path / "shards").mkdir()
    assert "checkpoint not found" in one_line_error(capsys, "train", *TINY, run, "--resume", str(tmp_path / "x.pt"))
    assert "best.pt" in one_line_error(capsys, "train", *TINY, run, "--resume", "best")
    assert "is a folder" in one_line_error(capsys, "train", *TINY, run, "data.source=manifest",
                                           f"data.path={tmp_path}", f"data.root={tmp_path}")
    assert "is empty" in one_line_error(capsys, "train", *TINY, run, "data.source=manifest",
                                        f"data.path={tmp_path / 'empty.jsonl'}", f"data.root={tmp_path}")
    assert "no column 'filepath'" in one_line_error(capsys, "train", *TINY, run, "data.source=csv",
                                                    f"data.path={tmp_path / 't.csv'}")
    assert "no *.tar shards" in one_line_error(capsys, "train", *TINY, run, "data.source=webdataset",
                                               f"data.path={tmp_path / 'shards'}")
    if not torch.cuda.is_available():
        assert "no CUDA device" in one_line_error(capsys, "train", *TINY, run, "train.device=cuda")
    assert "command line (foo.bar=1)" in one_line_error(capsys, "train", "foo.bar=1", code=2)
    assert "is empty" in one_line_error(capsys, "data", "check", str(tmp_path / "empty.jsonl"), "--root",
                                        str(tmp_path), code=2)


def test_checkpoint_problems_are_one_line(tiny_cfg, tmp_path, capsys, monkeypatch):
    cfg = tiny_cfg("method.name=clip", "train.steps=2", "eval.builtin=false")
    train(cfg)
    ckpt = list_checkpoints(cfg.train.output_dir)[-1][1]
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    flipped = tmp_path / "flipped.pt"
    data = bytearray(ckpt.read_bytes())
    state = load_checkpoint(ckpt)
    weight = state["model"]["clip.logit_scale"].numpy().tobytes()  # a unique 4-byte pattern in the file
    at = bytes(data).index(weight)
    data[at] ^= 0x40
    flipped.write_bytes(bytes(data))
    assert "truncated" in one_line_error(capsys, "eval", "--checkpoint", str(truncated))
    assert "not a declip checkpoint" in one_line_error(capsys, "eval", "--checkpoint", str(foreign))
    assert "checksum" in one_line_error(capsys, "eval", "--checkpoint", str(flipped))
    nan = tmp_path / "nan.pt"
    state["model"]["clip.logit_scale"] = torch.tensor(float("nan"))
    state.pop("checksums")
    torch.save(state, nan)  # no checksums: as written by an older declip
    assert "refusing to evaluate" in one_line_error(capsys, "eval", "--checkpoint", str(nan))
    assert "refusing to export" in one_line_error(capsys, "export", str(nan), str(tmp_path / "exp"))

    import declip.train.checkpoint as checkpoint

    def full_disk(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 64")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    line = one_line_error(capsys, "train", *TINY, f"train.output_dir={tmp_path / 'full'}", "eval.builtin=false")
    assert "cannot write" in line and "MiB free" in line


def test_config_errors_come_before_torch_is_imported():
    code = ("import sys; from declip.cli import main; rc = main(['train', 'optim.lr=-1']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "optim.lr: must be > 0" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------- 8. smaller
def test_step_line_shows_skips_and_log_file_has_step_lines(tiny_cfg, tmp_path):
    manifest, root = bad_manifest(tmp_path, n_good=60, n_bad=3)
    cfg = tiny_cfg("data.source=manifest", f"data.path={manifest}", f"data.root={root}", "train.steps=6",
                   "method.name=clip", "train.progress=true", "eval.builtin=false")
    train(cfg)
    log = (Path(cfg.train.output_dir) / "train.log").read_text()
    steps = [line for line in log.splitlines() if " INFO step " in line]
    assert len(steps) == 6, log  # the progress bar (off here: not a terminal) never hides them
    assert any("skipped_samples=" in line and "missing_file" in line for line in steps), steps


def test_version_and_help(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--version"])
    assert capsys.readouterr().out.startswith("declip ")
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "declip train" in capsys.readouterr().out
