"""The training loop. It knows the method interface (forward -> losses, metrics; after_step; data_spec;
.clip for evaluation) and nothing of any method's internals.

One step = ``grad_accum`` micro-batches of ``batch_size`` per device -> backward -> AdamW -> logit-scale clamp.
Rank 0 logs, evaluates and writes checkpoints; the other ranks wait at barriers that every rank reaches.
"""
from __future__ import annotations

import functools
import random
import signal
import time
from collections import deque
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Config, dump_config
from ..data.device_augment import build_device_stage
from ..data.loader import DevicePrefetcher, PairDataset, build_train_loader
from ..data.errors import SKIP_REASONS
from ..data.sources import build_source
from ..eval.zeroshot import run_zero_shot
from ..methods import build_method
from .. import distributed as dist
from .accel import autocast, effective_precision, prepare_method, scaled_step, wrap_ddp
from .checkpoint import load_checkpoint, resolve_resume, rng_state, save_best, save_checkpoint, set_rng_state
from .metrics import MetricsWriter, log, setup_logging
from .optim import build_optimizer, lr_at, set_lr


class NonFiniteLoss(RuntimeError):
    pass


class DataQualityError(RuntimeError):
    pass


def pick_device(cfg: Config, local_rank: int) -> torch.device:
    want = cfg.train.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", dist.cuda_index(local_rank))
    return torch.device("cpu")


def ignore_preemption_in_worker(chained, worker_id: int) -> None:
    """worker_init_fn: data-loader workers ignore SIGTERM/SIGUSR1. Preemption signals reach the whole process
    group; torch's worker handler dies on SIGTERM, and the trainer then fails with "DataLoader worker is killed
    by signal" before it can save. The trainer owns the workers' lifetime (and they exit if it dies)."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    if chained is not None:
        chained(worker_id)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


class Trainer:
    def __init__(self, cfg: Config, resume: str | None = None):
        self.cfg = cfg
        self.out = Path(cfg.train.output_dir)
        device_type = "cuda" if cfg.train.device == "cuda" or (
            cfg.train.device == "auto" and torch.cuda.is_available()) else "cpu"
        self.info = dist.init_distributed(device_type, cfg.train.dist_timeout_s)
        self.device = pick_device(cfg, self.info.local_rank)
        setup_logging(self.out, self.info.is_main)
        self.precision = effective_precision(cfg.train.precision, device_type)
        self._stop_signal: int | None = None

        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.method = build_method(cfg).to(self.device)
        prepare_method(self.method, cfg, device_type, self.info.world_size)  # before the optimizer and DDP
        self.optimizer = build_optimizer(self.method, cfg.optim)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.step, self.consumed = 0, 0
        self.skips = torch.zeros(len(SKIP_REASONS), dtype=torch.long)
        self.best, self.best_step = float("-inf"), -1
        self._rng_to_restore: dict | None = None  # applied once the loader iterator exists (see train())
        self._previous_handlers: dict = {}

        torch.manual_seed(cfg.train.seed * 1000 + self.info.rank)  # per-rank stream for anything random
        random.seed(cfg.train.seed * 1000 + self.info.rank)  # checkpointed too, so seeded (not from urandom)
        path = resolve_resume(resume, self.out) if resume else None
        if path is not None:
            self._restore(path)

        spec = self.method.data_spec(cfg)
        source = build_source(cfg.data, image_size=cfg.model.vision.image_size)
        dataset = PairDataset(source, spec, cfg.model.vision.image_size, cfg.train.seed)
        self.device_stage = build_device_stage(spec, cfg.model.vision.image_size)  # uint8 -> augmented, normalised
        self.loader = build_train_loader(
            dataset, cfg.train.batch_size, cfg.data.num_workers, self.info.rank, self.info.world_size,
            cfg.train.seed, start=self.consumed, pin_memory=cfg.data.pin_memory and device_type == "cuda")
        self.loader.worker_init_fn = functools.partial(ignore_preemption_in_worker, self.loader.worker_init_fn)
        self.model = wrap_ddp(self.method, self.device, self.info.world_size)
        self.writer = MetricsWriter(self.out, cfg.train.tensorboard, enabled=self.info.is_main,
                                    resume_step=self.step)  # drops records a killed run logged past it
        if self.info.is_main:
            (self.out / "config.yaml").write_text(dump_config(cfg))
            n_params = sum(p.numel() for p in self.method.parameters())
            log.info("method=%s model=%s params=%.1fM device=%s world=%d batch/device=%d output=%s",
                     cfg.method.name, cfg.model.preset, n_params / 1e6, self.device, self.info.world_size,
                     cfg.train.batch_size, self.out)

    # ------------------------------------------------------------------------------------------ state
    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.consumed = int(state["step"]), int(state["data"]["consumed"])
        self.skips = state["data"].get("skips", self.skips).cpu()
        self.best = float(state.get("best", self.best))
        self.best_step = int(state.get("best_step", self.best_step))
        rngs = state.get("rng", [])
        if self.info.rank < len(rngs):
            self._rng_to_restore = rngs[self.info.rank]
        log.info("resumed from %s at step %d (%d samples consumed per rank)", path, self.step, self.consumed)

    def _payload(self) -> dict:
        rngs = [rng_state()]
        if dist.is_dist():
            rngs = [None] * self.info.world_size
            torch.distributed.all_gather_object(rngs, rng_state())
        return {
            "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "step": self.step, "data": {"consumed": self.consumed, "skips": self.skips}, "rng": rngs,
            "best": self.best, "best_step": self.best_step, "config": self.cfg.to_dict(),
        }

    def save(self) -> Path | None:
        payload = self._payload()  # every rank joins the RNG gather
        path = None
        if self.info.is_main:
            path = save_checkpoint(self.out, self.step, payload, self.cfg.train.keep_last)
            log.info("checkpoint: %s", path)
        dist.barrier()
        return path

    # ----------------------------------------------------------------------------------------- eval
    def evaluate(self) -> dict[str, float]:
        results, improved = {}, False
        if self.info.is_main:  # rank 0 alone, on the unwrapped towers: no DDP collective inside
            results = run_zero_shot(self.method.clip, self.cfg, self.device)
            self.writer.write(self.step, results, kind="eval")
            shown = {k: round(v, 2) for k, v in results.items() if k.endswith(("top1", "top5", "chance"))}
            log.info("zero-shot @ step %d: %s", self.step, shown)
            top1 = results.get("imagenet/top1", results.get("builtin/top1"))
            improved = top1 is not None and top1 > self.best
            if improved:
                self.best, self.best_step = top1, self.step
        flag = torch.tensor([float(self.info.is_main and improved)], device=self.device)
        if dist.all_reduce_sum(flag).item() > 0:  # every rank joins the payload's RNG gather
            payload = self._payload()
            if self.info.is_main:
                log.info("best zero-shot top-1 so far (%.2f%%): %s", self.best, save_best(self.out, payload))
        dist.barrier()
        return results

    # ----------------------------------------------------------------------------------------- loop
    def _autocast(self):
        return autocast(self.precision, self.device.type)  # fp32 on the CPU whatever was asked (a warning)

    def _check_skips(self, batch: dict) -> None:
        self.skips += batch["skips"].cpu()
        bad = int(self.skips.sum())
        seen = bad + self.consumed
        if seen >= 200 and bad / seen > self.cfg.data.max_skip_rate:
            counts = {r: int(c) for r, c in zip(SKIP_REASONS, self.skips) if c}
            raise DataQualityError(
                f"{bad} of {seen} samples unusable ({100 * bad / seen:.1f}% > data.max_skip_rate="
                f"{100 * self.cfg.data.max_skip_rate:.1f}%): {counts}; e.g. {batch['skip_examples']}")

    def _on_signal(self, signum, _frame) -> None:
        log.warning("signal %d: saving a checkpoint at the end of this step, then exiting", signum)
        self._stop_signal = signum

    def train(self) -> dict:
        cfg, tr = self.cfg, self.cfg.train
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)
        global_batch = tr.batch_size * tr.grad_accum * self.info.world_size
        step_times: deque[float] = deque(maxlen=100)
        wait_times: deque[float] = deque(maxlen=100)
        progress = None
        if self.info.is_main and tr.progress:
            from tqdm import tqdm

            progress = tqdm(total=tr.steps, initial=self.step, desc="train", dynamic_ncols=True, mininterval=2)
        it = DevicePrefetcher(iter(self.loader), self.device)  # copies batch i+1 while step i runs (CUDA)
        if self._rng_to_restore is not None:  # after iter(): creating it draws from the global generator
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        nonfinite_skipped = amp_overflows = 0
        results: dict = {}
        self.method.train()
        while self.step < tr.steps:
            t0 = time.perf_counter()
            lr = lr_at(self.step, cfg.optim, tr.steps)
            set_lr(self.optimizer, lr)
            wait = 0.0
            parts: dict[str, float] = {}
            metrics: dict[str, float] = {}
            skip_step = False
            for micro in range(tr.grad_accum):
                tw = time.perf_counter()
                batch = next(it)
                self.consumed += tr.batch_size  # per micro-batch: a skip may break out after the first
                wait += time.perf_counter() - tw
                self._check_skips(batch)
                batch = self.device_stage(to_device(batch, self.device))
                sync = nullcontext() if micro == tr.grad_accum - 1 or not isinstance(self.model, DDP) \
                    else self.model.no_sync()
                with sync:
                    with self._autocast():
                        losses, metrics = self.model(batch)
                    loss = sum(losses.values()) / tr.grad_accum
                    # ranks that saw a non-finite loss, summed so that every rank skips the same step
                    nonfinite = dist.all_reduce_sum(torch.tensor([float(not torch.isfinite(loss))],
                                                                 device=self.device))
                    if nonfinite.item() > 0:
                        skip_step = True
                        break
                    self.scaler.scale(loss).backward()
                for k, v in losses.items():
                    parts[k] = parts.get(k, 0.0) + v.item() / tr.grad_accum
            if skip_step:
                self.optimizer.zero_grad(set_to_none=True)
                nonfinite_skipped += 1
                msg = f"non-finite loss at step {self.step} ({ {k: v.item() for k, v in losses.items()} })"
                if tr.nonfinite == "stop":
                    raise NonFiniteLoss(msg + "; train.nonfinite=stop")
                # skipping undoes the update, not the forward: a NaN that reached a buffer (BatchNorm running
                # stats) stays, and would make every later checkpoint refuse to save. Stop now instead.
                bad = [n for n, b in self.method.named_buffers() if bool(torch.isnan(b).any())]  # -inf masks: fine
                if dist.all_reduce_sum(torch.tensor([float(len(bad))], device=self.device)).item() > 0:
                    raise NonFiniteLoss(f"{msg}; it left non-finite buffers {bad[:3]} (on some rank): a skip "
                                        "cannot undo that; resume from the last checkpoint")
                log.warning("%s: step skipped (%d so far)", msg, nonfinite_skipped)
                self.step += 1
                continue
            if not scaled_step(self.scaler, self.optimizer, self.method.parameters(), cfg.optim.grad_clip):
                amp_overflows += 1  # fp16 overflow: the scaler skipped this update and halved its scale
            self.optimizer.zero_grad(set_to_none=True)
            self.method.after_step()
            self.step += 1
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            step_times.append(dt)
            wait_times.append(wait)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{sum(parts.values()):.3f}", refresh=False)
            if self.step % tr.log_every == 0 or self.step == tr.steps:
                fps = global_batch * len(step_times) / sum(step_times)
                record = {"loss": sum(parts.values()), **{f"loss/{k}": v for k, v in parts.items()}, **metrics,
                          "lr": lr, "images_per_s": fps, "data_wait": sum(wait_times) / sum(step_times),
                          "skipped_samples": int(self.skips.sum()), "nonfinite_steps": nonfinite_skipped}
                if self.scaler.is_enabled():
                    record.update(amp_scale=float(self.scaler.get_scale()), amp_overflow_steps=amp_overflows)
                self.writer.write(self.step, record)
                if self.info.is_main:
                    shown = " ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float))
                    (progress.write if progress else log.info)(f"step {self.step}/{tr.steps} {shown}")
            if tr.mode == "full":
                if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < tr.steps:
                    results = self.evaluate()
                if tr.ckpt_every and self.step % tr.ckpt_every == 0 and self.step < tr.steps:
                    self.save()
            stop = self._stop_signal is not None
            if self.info.world_size > 1:  # the ranks get the signal at different moments: stop at the same step
                stop = dist.all_reduce_sum(torch.tensor([float(stop)], device=self.device)).item() > 0
                if stop and self._stop_signal is None:
                    self._stop_signal = -1  # another rank's signal; -1 keeps this rank out of the final eval/save
            if stop:
                self.save()
                log.warning("stopped by signal %d at step %d; resume with --resume latest", self._stop_signal,
                            self.step)
                break
        if progress is not None:
            progress.close()
        summary = {"step": self.step, "skipped_samples": int(self.skips.sum()),
                   "skips": {r: int(c) for r, c in zip(SKIP_REASONS, self.skips)},
                   "nonfinite_steps": nonfinite_skipped}
        if step_times:
            summary["fps"] = global_batch * len(step_times) / sum(step_times)
            summary["data_wait"] = sum(wait_times) / sum(step_times)
        if tr.mode == "performance" and step_times:
            log.info("performance: FPS %.1f images/s (global batch %d / mean step time of the last %d steps), "
                     "data wait %.1f%% of the step", summary["fps"], global_batch, len(step_times),
                     100 * summary["data_wait"])
        elif self._stop_signal is None:
            results = self.evaluate()
            saved = self.save()  # a path on rank 0 only
            if saved is not None:
                summary["checkpoint"] = str(saved)
        summary["eval"] = results
        self.writer.write(self.step, {k: v for k, v in summary.items() if isinstance(v, (int, float))}, "summary")
        return summary

    def close(self) -> None:
        for sig, handler in self._previous_handlers.items():  # leave the process as we found it
            if handler is not None:
                signal.signal(sig, handler)
        self.writer.close()
        dist.cleanup()


def train(cfg: Config, resume: str | None = None) -> dict:
    try:
        trainer = Trainer(cfg, resume)
    except BaseException:
        dist.cleanup()  # a failed start (bad resume path, data error) must not leave the process group open
        raise
    try:
        return trainer.train()
    finally:
        trainer.close()

