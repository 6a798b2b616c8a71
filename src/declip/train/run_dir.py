"""What a run may do with its output folder: start fresh, resume, or refuse, decided before anything is built.

- One run at a time: rank 0 locks the folder (``run_lock``) before it looks at anything in it.
- A fresh run into a folder that holds another run's checkpoints is refused (a later ``--resume latest`` would
  silently continue the other run), and so is one into a folder with an earlier run's metrics but no checkpoint
  (an interrupted run: starting over would drop its records); ``--overwrite`` removes that run's checkpoints,
  metrics and log first, before anything of the new run is opened there.
- ``--resume latest`` with nothing to resume is an error; ``--resume latest-or-new`` starts fresh then (for
  requeue scripts that cannot know whether the first attempt got as far as a checkpoint).
- Resuming compares the checkpoint's config with this one: what changes the model's or method's shape is
  refused; a change to how it trains (lr, batch, seed, data, ...) is listed and needs ``--allow-config-change``;
  run-control settings (steps, logging, checkpoint cadence, workers, evaluation) may change freely. The
  previous ``config.yaml`` is kept as ``config.<step>.yaml``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .. import distributed as dist
from ..config import Config, dump_config
from ..config_parse import flatten
from ..errors import CheckpointError, DeclipError, RunDirError
from .checkpoint import BEST_NAME, list_checkpoints
from .checkpoint import resolve_resume as find_checkpoint
from .metrics import read_metrics
from .run_lock import RunLock

SHAPE_PREFIXES = ("model.", "method.name", "method.simsiam_proj_dim", "method.simsiam_pred_dim",
                  "method.queue_size", "method.filip_dim", "method.simclr_hidden_dim", "method.simclr_out_dim")
FREE_PREFIXES = ("train.steps", "train.log_every", "train.ckpt_every", "train.keep_last", "train.progress",
                 "train.tensorboard", "train.output_dir", "train.dist_timeout_s", "train.max_nonfinite_skips",
                 "train.peak_tflops", "train.mode", "train.compile", "train.grad_checkpointing", "train.channels_last",
                 "train.wandb",  # W&B settings: where the run is logged, not how it trains
                 "data.num_workers", "data.pin_memory", "data.index_dir", "data.worker_timeout_s", "eval.",
                 "model.init_from")  # init_from: a resumed run's weights come from its checkpoint, not from it
# under a shape prefix but no shape: they change training, not the weights (--allow-config-change)
TRAINING_UNDER_SHAPE = ("model.vision.patch_dropout",)
RUN_FILES = ("metrics.jsonl", "tensorboard", "config.yaml", "train.log", "wandb", "wandb_run.json")


def config_changes(old: dict, new: dict) -> list[tuple[str, object, object]]:
    a, b = flatten(old), flatten(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _weight_switch(key: str, old, new) -> bool:
    """A DeCLIP loss weight going to or from 0 adds or removes a head: a shape change."""
    return key.startswith("method.") and key.endswith("_weight") and (old == 0) != (new == 0)


def check_resume_config(old: dict, new: dict, allow_change: bool) -> list[str]:
    """Raise for a change the checkpoint cannot follow; return the accepted changes as ``key: old -> new``."""
    changes = config_changes(old, new)
    shape = [c for c in changes if (c[0].startswith(SHAPE_PREFIXES)
                                    and not c[0].startswith(FREE_PREFIXES + TRAINING_UNDER_SHAPE))
             or _weight_switch(*c)]
    if shape:
        listed = ", ".join(f"{k}: {o!r} -> {n!r}" for k, o, n in shape)
        raise CheckpointError(f"cannot resume: the checkpoint was trained with a different model/method shape "
                              f"({listed}); start a new run in another train.output_dir")
    train = [c for c in changes if not c[0].startswith(FREE_PREFIXES)]
    if train and not allow_change:
        listed = ", ".join(f"{k}: {o!r} -> {n!r}" for k, o, n in train)
        raise CheckpointError(f"resuming with a changed config ({listed}); pass --allow-config-change to accept, "
                              "or resume with the checkpoint's settings")
    return [f"{k}: {o!r} -> {n!r}" for k, o, n in changes]


def resume_path(spec: str | None, directory: Path, overwrite: bool = False) -> Path | None:
    """The checkpoint to resume from (None = a fresh run), after the folder checks above."""
    directory = Path(directory)
    found = list_checkpoints(directory)
    if spec is None or (spec == "latest-or-new" and not found):
        if overwrite:
            clear_run(directory)
        elif found or (directory / BEST_NAME).exists():
            newest = found[-1][1].name if found else BEST_NAME
            raise RunDirError(f"{directory} already holds a run's checkpoints (newest: {newest}): resume it "
                              "with --resume latest, choose another train.output_dir, or pass --overwrite to "
                              "replace it")
        elif spec is None and (last := _last_logged_step(directory)) is not None:  # latest-or-new: a requeue
            raise RunDirError(f"{directory / 'metrics.jsonl'} holds an earlier run's metrics (up to step {last}) "
                              "but no checkpoint to resume: choose another train.output_dir, or pass --overwrite "
                              "to replace that run")
        return None
    if spec in ("latest", "latest-or-new"):
        if not found:
            raise RunDirError(f"--resume latest: no checkpoint (ckpt_*.pt) in {directory} to resume; use "
                              "--resume latest-or-new to start fresh when there is none")
        return found[-1][1]
    return find_checkpoint(spec, directory)


def _last_logged_step(directory: Path) -> int | None:
    """The last step in the folder's metrics.jsonl; None when there is no record (or no file)."""
    path = directory / "metrics.jsonl"
    records = read_metrics(path) if path.is_file() else []
    return max(int(r["step"]) for r in records) if records else None


def claim_output_dir(directory: Path, resume: str | None, overwrite: bool,
                     is_main: bool) -> tuple[RunLock, Path | None]:
    """The run's lock (held by rank 0; an unheld one elsewhere) and the checkpoint to resume (None = fresh),
    decided before anything of the run is opened in the folder: rank 0 locks it, then checks it and clears it for
    ``--overwrite``. The other ranks learn rank 0's verdict in one collective, so that a refusal ends every rank
    at once (not at the first barrier, after ``train.dist_timeout_s``), and look at the folder only once it is
    cleared."""
    lock, path, error = RunLock(directory), None, None
    if is_main:
        try:
            lock.acquire()
            path = resume_path(resume, directory, overwrite)
        except DeclipError as e:
            lock.release()
            error = e
    if dist.any_rank(error is not None):
        if error is not None:
            raise error
        raise RunDirError(f"rank 0 refused train.output_dir={directory} (its message says why)")
    if not is_main:
        path = resume_path(resume, directory)
    return lock, path


def clear_run(directory: Path) -> None:
    for _, p in list_checkpoints(directory):
        p.unlink()
    (directory / BEST_NAME).unlink(missing_ok=True)
    for name in RUN_FILES:
        p = directory / name
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def write_run_config(directory: Path, cfg: Config, resumed_at: int | None) -> None:
    """``config.yaml`` is always this process's config; a resumed run keeps the one it replaced as
    ``config.<step>.yaml`` (the record of what trained the steps before)."""
    current = directory / "config.yaml"
    if resumed_at is not None and current.is_file():
        current.replace(directory / f"config.{resumed_at}.yaml")
    current.write_text(dump_config(cfg))
