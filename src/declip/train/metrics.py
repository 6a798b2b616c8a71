"""Run outputs on rank 0: a human log, a JSON-lines metrics file and TensorBoard scalars."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import deque
from pathlib import Path

import torch

from .. import distributed as dist
from ..config import Config, from_preset
from ..errors import RunDirError
from ..metric_names import producible_metrics
from .checkpoint import write_failure
from .run_files import RunLogFile, close_run_logs, open_scalars  # noqa: F401  (close_run_logs re-exported)
from .tracking import open_tracker  # noqa: F401  (re-exported: the trainer opens the tracker it passes here)

log = logging.getLogger("declip")


class ConsoleHandler(logging.StreamHandler):
    """Writes through tqdm, so a log line never breaks a progress bar drawn on the terminal; to the standard
    output of the moment, not the one at set-up (a notebook or a test may have replaced and closed that one)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # noqa: BLE001  (logging must never raise)
            self.handleError(record)


def setup_logging(output_dir: Path | None, is_main: bool) -> None:
    """Rank 0 logs to stdout and to ``train.log`` (every line, errors included); other ranks warnings only."""
    level = logging.INFO if is_main else logging.WARNING
    handlers: list[logging.Handler] = [ConsoleHandler(sys.stdout)]
    if output_dir is not None and is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(RunLogFile(output_dir / "train.log"))  # a full disk: one warning, not a traceback
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers, force=True)


class MetricMeter:
    """Sums of each step's losses and metrics since the last log line, kept as tensors on the device: a step
    never waits for the device to report a number. ``reduce`` averages them over the steps and the ranks in
    one all-reduce (the keys are the same on every rank: the methods' outputs depend only on the config)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.amp_overflows = 0

    def add(self, values: dict[str, torch.Tensor], applied: torch.Tensor | None = None) -> None:
        """``applied`` (0 or 1 on the device): whether the step counts; a skipped (non-finite) step adds nothing,
        its NaN included, without the host having to know which steps were skipped."""
        if applied is not None:
            values = {k: torch.where(applied.bool(), v, torch.zeros_like(v)) for k, v in values.items()}
        for k, v in values.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.steps = self.steps + (1 if applied is None else applied)

    def reduce(self, device: torch.device) -> dict[str, float]:
        steps = float(self.steps)  # a device count when skips are decided there: read here, at log steps only
        if not steps:
            return {}
        keys = sorted(self.sums)
        mean = torch.stack([self.sums[k].to(device) for k in keys]) / steps
        mean = dist.all_reduce_sum(mean) / dist.get_world_size()
        self.sums, self.steps = {}, 0
        return dict(zip(keys, mean.tolist()))


def describe_run(cfg: Config, method: torch.nn.Module, device: torch.device, world_size: int,
                 lr_scale: float) -> None:
    """What this run is, in the first lines of its log: what a preset chose, the effective lr, and whether
    anything will be evaluated at all."""
    tr = cfg.train
    n_params = sum(p.numel() for p in method.parameters())
    log.info("method=%s model=%s params=%.1fM device=%s world=%d batch/device=%d output=%s", cfg.method.name,
             cfg.model.preset, n_params / 1e6, device, world_size, tr.batch_size, tr.output_dir)
    filled = from_preset(cfg)
    if filled:
        log.info("from preset %s: %s", cfg.model.preset, " ".join(f"{k}={v}" for k, v in filled.items()))
    log.info("peak lr %.3g: %s", cfg.optim.lr * lr_scale, lr_origin(cfg, lr_scale))
    if not producible_metrics(cfg.eval):
        log.warning("no evaluation task (eval.builtin=false and no eval.val_manifest, retrieval_manifest or "
                    "probe_*_manifest): nothing will be evaluated and no best.pt written")


def lr_origin(cfg: Config, lr_scale: float) -> str:
    """Where the run's peak lr comes from, for the start-of-run line (issue 31: a scaled lr must not surprise)."""
    origins = getattr(cfg, "origins", {})
    src = origins.get("optim.lr", "the default")
    if lr_scale == 1.0:
        switched = origins.get("optim.lr_scaling", "").startswith("none because")  # config.explicit_lr_is_the_peak
        why = "; the recipe's optim.lr_scaling is not applied to it" if switched else ""
        return f"optim.lr as written (from {src}{why})"
    return (f"optim.lr {cfg.optim.lr:.3g} (from {src}) is for a global batch of {cfg.optim.base_batch}, scaled "
            f"by {lr_scale:.3g} (optim.lr_scaling={cfg.optim.lr_scaling}); set optim.lr yourself to train at it")


def log_step(step: int, steps: int, record: dict, skip_reasons: str) -> None:
    """The console line of a log step: every float value, then the skip counts where not zero (with their
    reasons), so a run that loses samples or steps says so where it is watched."""
    shown = " ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float))
    counts = " ".join(f"{k}={record[k]}" for k in ("skipped_samples", "nonfinite_steps") if record[k])
    reasons = f" ({skip_reasons})" if skip_reasons else ""
    log.info("step %d/%d %s%s", step, steps, shown, f" {counts}{reasons}" if counts else "")


def synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        getattr(torch, device.type).synchronize()


class StepClock:
    """Throughput between log lines. The host runs ahead of an accelerator, so time is read only after a
    synchronize at a log step (not every step); evaluation and checkpoint time is excluded via ``pause``."""

    def __init__(self, step: int):
        self.t, self.step, self.wait, self.paused = time.perf_counter(), step, 0.0, 0.0
        self.laps: deque[tuple[int, float, float, int]] = deque(maxlen=100)  # steps, seconds, wait, batch

    def pause(self, seconds: float) -> None:
        self.paused += seconds

    def lap(self, step: int, device: torch.device, global_batch: int) -> dict[str, float]:
        synchronize(device)
        now = time.perf_counter()
        seconds = max(now - self.t - self.paused, 1e-9)
        self.laps.append((step - self.step, seconds, self.wait, global_batch))
        steps, wait = step - self.step, self.wait
        self.t, self.step, self.wait, self.paused = now, step, 0.0, 0.0
        return {"images_per_s": global_batch * steps / seconds, "data_wait": wait / seconds,
                "step_time_s": seconds / max(steps, 1)}

    def summary(self, window: int = 100) -> dict[str, float]:
        """FPS over the last ``window`` steps (whole log intervals): the performance-mode figure."""
        steps = seconds = wait = images = 0
        for n, dt, w, batch in reversed(self.laps):
            steps, seconds, wait, images = steps + n, seconds + dt, wait + w, images + n * batch
            if steps >= window:
                break
        if not steps:
            return {}
        return {"fps": images / seconds, "data_wait": wait / seconds, "fps_steps": steps}


def _parse_lines(path: Path) -> list[dict]:
    """Records of a metrics file; a line cut short by a kill (the last one, typically) is dropped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "step" in rec:
                records.append(rec)
    return records


def read_metrics(path: Path | str) -> list[dict]:
    """All records of a ``metrics.jsonl`` (a file or its run directory), one per (kind, step): the LAST one
    written wins, so a run resumed behind its last logged step reads as one clean history."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    latest: dict[tuple[str, int], dict] = {}
    for rec in _parse_lines(path):
        key = (rec.get("kind", "train"), int(rec["step"]))
        latest.pop(key, None)  # re-insert: order follows the last write
        latest[key] = rec
    return sorted(latest.values(), key=lambda r: int(r["step"]))  # stable: same step keeps write order


def truncate_metrics(path: Path, after_step: int) -> int:
    """Drop records with step > ``after_step`` (written by a run that was killed after its last checkpoint;
    the resumed run writes them again). Atomic rewrite; returns how many records were dropped."""
    if not path.is_file():
        return 0
    records = _parse_lines(path)
    keep = [r for r in records if int(r["step"]) <= after_step]
    tmp = path.with_name(f".{path.name}.tmp")  # rewritten even when nothing is dropped: a cut-off last line
    # without its newline would otherwise swallow the first record appended after it
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
    os.replace(tmp, path)
    return len(records) - len(keep)


class MetricsWriter:
    """``resume_step``: the step this run starts from (0 for a fresh start); records and TensorBoard events
    past it, left by an interrupted run (or an earlier run in the same directory), are discarded, so every
    step appears once in both. None keeps everything (append only). ``tracker``: an experiment tracker (W&B,
    train/tracking.py) that gets every record too, or None."""

    def __init__(self, output_dir: Path, tensorboard: bool = True, enabled: bool = True,
                 resume_step: int | None = None, tracker=None):
        self.enabled = enabled
        self.tb, self.tracker = None, tracker
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            dropped = truncate_metrics(output_dir / "metrics.jsonl", resume_step)
            if dropped:
                log.info("metrics.jsonl: dropped %d records past step %d, where this run starts (left by an "
                         "interrupted or earlier run in the same directory)", dropped, resume_step)
        self.path = output_dir / "metrics.jsonl"
        self.jsonl = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            self.tb = open_scalars(output_dir / "tensorboard", None if resume_step is None else resume_step + 1)

    def write(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": time.time(), **values}
        try:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
        except OSError as e:  # a full disk: the OS error alone names no file
            raise RunDirError(write_failure(self.path, e.strerror or str(e))) from e
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add(f"{kind}/{k}", v, step)
        if self.tracker is not None:
            self.tracker.log(step, values, kind)

    def close(self) -> None:
        if self.enabled:
            try:
                self.jsonl.close()
            except OSError:  # the flush of a write that already failed (full disk): that error is reported
                pass
            if self.tb is not None:
                self.tb.close()
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None


def progress_bar(total: int, initial: int, wanted: bool):
    """A progress bar only for a person watching: on a terminal, never into a log file or a pipe."""
    if not (wanted and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, mininterval=2,
                leave=False)  # cleared on close: the closing summary is what stays on the terminal
