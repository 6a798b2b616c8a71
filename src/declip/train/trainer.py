"""The training loop. It knows the method interface (forward -> losses, metrics; after_step; data_spec;
.clip for evaluation) and nothing of any method's internals.

One step = ``grad_accum`` micro-batches of ``batch_size`` per device -> backward -> AdamW -> logit-scale clamp.
Rank 0 logs, evaluates and writes checkpoints; the other ranks wait at barriers that every rank reaches.
Everything that could refuse the run (device, output folder, resume config, data and evaluation paths) is
checked in ``__init__`` before the model is built.
"""
from __future__ import annotations

import functools
import random
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import distributed as dist
from ..config import Config
from ..data.device_augment import build_device_stage
from ..data.errors import DataStallError
from ..data.fetch import BoundedFetch
from ..data.loader import DevicePrefetcher, PairDataset, build_train_loader, worker_timeout_s
from ..data.sources import build_source
from ..device import resolve_device
from ..methods import build_method
from ..metric_names import default_best_metric
from .accel import autocast, effective_precision, prepare_method, scaled_step, wrap_ddp
from .checkpoint import (link_best, list_checkpoints, load_checkpoint, load_model_state, rng_state, save_best,
                         save_checkpoint, set_rng_state)
from .evaluation import score_towers
from .health import DeviceSkip, NonFiniteGuard, SkipRateGuard
from .metrics import (MetricMeter, MetricsWriter, StepClock, close_run_logs, describe_run, log, log_step,
                      open_tracker, progress_bar, setup_logging)
from .mfu import StepFlops, device_peak_tflops
from .optim import build_optimizer, load_optimizer_state, lr_at, part_lrs, set_lr
from .preemption import PreemptionSignals
from .preflight import check_eval_paths
from .run_dir import check_resume_config, claim_output_dir, write_run_config
from .watchdog import stop_on_stall
from .workers import ignore_preemption_in_worker, stop_loader_workers


class Trainer:
    def __init__(self, cfg: Config, resume: str | None = None, *, overwrite: bool = False,
                 allow_config_change: bool = False):
        self.cfg, tr = cfg, cfg.train
        self.out = Path(tr.output_dir)
        self.info = dist.env_dist_info()
        self.device = resolve_device(tr.device, self.info.local_rank, self.info.local_world_size)
        dist.init_distributed(self.device, tr.dist_timeout_s)
        # locked (one run per folder) and cleared for --overwrite before anything, train.log included, is opened
        self._lock, path = claim_output_dir(self.out, resume, overwrite, self.info.is_main)
        try:
            self._build(path, allow_config_change)
        except BaseException:  # a failed start frees the folder at once (train() has no trainer to close)
            self._lock.release()
            raise

    def _build(self, path: Path | None, allow_config_change: bool) -> None:
        cfg, tr = self.cfg, self.cfg.train
        setup_logging(self.out, self.info.is_main)
        self.precision = effective_precision(tr.precision, self.device.type)
        self.preemption = PreemptionSignals()

        state = load_checkpoint(path, map_location=self.device) if path else None
        changes = check_resume_config(state["config"], cfg.to_dict(), allow_config_change) if state else []
        source = build_source(cfg.data, image_size=cfg.model.vision.image_size)  # data errors before the model
        check_eval_paths(cfg)

        torch.manual_seed(tr.seed)  # identical initial weights on every rank
        self.method = build_method(cfg).to(self.device)
        if cfg.model.init_from and state is None:  # a resumed run's weights are its checkpoint's
            from ..models.pretrained import init_towers

            for line in init_towers(self.method, cfg.model.init_from):
                if self.info.is_main:
                    log.info("%s", line)
        prepare_method(self.method, cfg, self.device.type, self.info.world_size)  # before the optimizer and DDP
        fused = cfg.optim.fused is True or (cfg.optim.fused == "auto" and self.device.type == "cuda")
        self.optimizer = build_optimizer(self.method, cfg.optim, fused=fused)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.step, self.consumed = 0, 0
        self.skips = SkipRateGuard(cfg.data.max_skip_rate)
        self.nonfinite = NonFiniteGuard(tr.nonfinite, tr.max_nonfinite_skips)
        # skip a non-finite step on the device (no host sync per step) where the optimizer can take the flag;
        # fp16's scaler skips its own way, and train.nonfinite=stop must stop at the step itself
        self.device_skip = (DeviceSkip(self.nonfinite, self.device) if fused and tr.nonfinite == "skip"
                            and not self.scaler.is_enabled() else None)
        self.best, self.best_step = float("-inf"), -1
        self._rng_to_restore: dict | None = None  # applied once the loader iterator exists (see train())
        self._iterator = None
        torch.manual_seed(tr.seed * 1000 + self.info.rank)  # per-rank stream for anything random
        random.seed(tr.seed * 1000 + self.info.rank)  # checkpointed too, so seeded (not from urandom)
        if state is not None:
            self._restore(path, state, changes)

        spec = self.method.data_spec(cfg).with_user_crops(cfg.data)  # the user's crop ranges and resize, where set
        dataset = PairDataset(source, spec, cfg.model.vision.image_size, tr.seed,
                              sample_timeout_s=cfg.data.sample_timeout_s, readahead=cfg.data.readahead)
        self.device_stage = build_device_stage(spec, cfg.model.vision.image_size)  # uint8 crops -> augmented,
        # normalised views, batched on the training device (the workers only decode and crop)
        self.loader = build_train_loader(
            dataset, tr.batch_size, cfg.data.num_workers, self.info.rank, self.info.world_size, tr.seed,
            start=self.consumed, pin_memory=cfg.data.pin_memory and self.device.type != "cpu",
            worker_timeout=worker_timeout_s(cfg.data.sample_timeout_s, cfg.data.worker_timeout_s))
        self.loader.worker_init_fn = functools.partial(ignore_preemption_in_worker, self.loader.worker_init_fn)
        self.model = wrap_ddp(self.method, self.device, self.info.world_size)
        self.writer = MetricsWriter(self.out, tr.tensorboard, enabled=self.info.is_main, resume_step=self.step,
                                    tracker=open_tracker(cfg, self.out, self.info.is_main, state is not None))
        self.meter, self.clock = MetricMeter(), StepClock(self.step)
        self.flops = StepFlops(device_peak_tflops(self.device, self.precision, tr.peak_tflops))
        self.lr_scale = cfg.optim.lr_scale(tr.batch_size * tr.grad_accum * self.info.world_size)
        if self.info.is_main:
            write_run_config(self.out, self.cfg, resumed_at=self.step if state is not None else None)
            describe_run(cfg, self.method, self.device, self.info.world_size, self.lr_scale)

    # ------------------------------------------------------------------------------------------ state
    def _restore(self, path: Path, state: dict, changes: list[str]) -> None:
        load_model_state(self.method, state["model"], path)
        load_optimizer_state(self.optimizer, state["optimizer"], path)
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.consumed = int(state["step"]), int(state["data"]["consumed"])
        self.skips = SkipRateGuard(self.cfg.data.max_skip_rate, state["data"].get("skips"))
        self.nonfinite.total = int(state["data"].get("nonfinite_steps", 0))
        self.best = float(state.get("best", self.best))
        self.best_step = int(state.get("best_step", self.best_step))
        rngs = state.get("rng", [])
        if self.info.rank < len(rngs):
            self._rng_to_restore = rngs[self.info.rank]
        log.info("resumed from %s at step %d (%d samples consumed per rank)", path, self.step, self.consumed)
        for change in changes:
            log.warning("config changed on resume: %s", change)

    def _payload(self) -> dict:
        rngs = [rng_state()]
        if dist.is_dist():
            rngs = [None] * self.info.world_size
            torch.distributed.all_gather_object(rngs, rng_state())
        return {
            "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "step": self.step, "rng": rngs, "best": self.best, "best_step": self.best_step,
            "data": {"consumed": self.consumed, "skips": self.skips.counts, "nonfinite_steps": self.nonfinite.total},
            "config": self.cfg.to_dict(),
        }

    def save(self) -> Path | None:
        if self.device_skip is not None:  # the saved skip count is the true one
            self._settle()
        payload = self._payload()  # every rank joins the RNG gather
        path = None
        if self.info.is_main:
            path = save_checkpoint(self.out, self.step, payload, self.cfg.train.keep_last)
            log.info("checkpoint: %s", path)
            if self.best_step == self.step:  # this step's eval set the best: best.pt names this payload too
                log.info("best.pt: %s (hard link)", link_best(self.out, path))
        dist.barrier()
        return path

    def last_checkpoint(self) -> Path | None:
        found = list_checkpoints(self.out)
        return found[-1][1] if found else None

    # ----------------------------------------------------------------------------------------- eval
    def evaluate(self, checkpoint_follows: bool = False) -> dict[str, float]:
        """Score the towers; a new best writes best.pt, or, when a checkpoint of this step follows
        (``checkpoint_follows``), leaves it to :meth:`save` to link best.pt to that checkpoint."""
        results, improved = {}, False
        if self.info.is_main:
            results, picked = score_towers(self.method, self.cfg, self.device, self.step, self.writer)
            improved = picked is not None and picked[1] > self.best
            if improved:
                self.best, self.best_step = picked[1], self.step
        flag = torch.tensor([float(self.info.is_main and improved)], device=self.device)
        if dist.all_reduce_sum(flag).item() > 0:
            if checkpoint_follows:  # save() links best.pt to its checkpoint: one payload on disk, not two
                if self.info.is_main:
                    log.info("best %s so far (%.2f): best.pt = this step's checkpoint", picked[0], self.best)
            else:
                payload = self._payload()  # every rank joins the payload's RNG gather
                if self.info.is_main:
                    log.info("best %s so far (%.2f): %s", picked[0], self.best, save_best(self.out, payload))
        dist.barrier()
        return results

    # ----------------------------------------------------------------------------------------- loop
    def train(self) -> dict:
        tr = self.cfg.train
        self.preemption.install()
        batches = self._batches()
        self.method.train()
        progress = progress_bar(self.cfg.train.steps, self.step, self.info.is_main and self.cfg.train.progress)
        try:
            while self.step < tr.steps:
                lr = lr_at(self.step, self.cfg.optim, tr.steps) * self.lr_scale
                set_lr(self.optimizer, lr)
                consumed = self.consumed
                try:
                    updated = self._train_step(batches)
                except DataStallError as e:  # at a step's start (watchdog.py): saved if a signal asked for it
                    if not stop_on_stall(self, consumed, e):
                        raise
                    break
                self.step += 1
                if updated is None:  # decided on the device: read only at a step where the host acts on it
                    updated = self._settle() if self._host_acts() else True
                if progress is not None:
                    progress.update(1)
                if updated and self._log_due():
                    self._log(lr)
                if updated:  # a skipped step leaves nothing new to evaluate or save
                    self._maybe_eval_and_checkpoint()
                if self._should_stop():
                    break
        finally:
            if progress is not None:
                progress.close()
        return self._finish()

    def _batches(self):
        """The loader's batches on the device, with the wait for each and its skipped samples accounted."""
        data, tr = self.cfg.data, self.cfg.train  # the main thread waits for the loader with a deadline:
        self._iterator = BoundedFetch(iter(self.loader), self.loader.timeout or 0.0, data.sample_timeout_s,
                                      tr.grad_accum, lambda: self.preemption.requested and self.info.world_size == 1,
                                      threaded=data.num_workers > 0)  # no worker can stall it (watchdog.py)
        it = DevicePrefetcher(self._iterator, self.device)  # copies batch i+1 while step i runs (CUDA)
        if self._rng_to_restore is not None:  # after iter(): creating it draws from the global generator
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        while True:
            t0 = time.perf_counter()
            batch = next(it)
            self.clock.wait += time.perf_counter() - t0
            self.consumed += self.cfg.train.batch_size  # per micro-batch: counts what the stream handed out
            self.skips.add(batch["skips"], self.consumed, batch["skip_examples"])
            yield self.device_stage(batch)

    def _train_step(self, batches) -> bool | None:
        """Forward/backward over the micro-batches, then one update (True), or a skip (False) if anything is
        non-finite; None when the skip was decided on the device (``DeviceSkip``: the host does not wait)."""
        accum = self.cfg.train.grad_accum
        values: dict[str, torch.Tensor] = {}
        with self.flops.count():  # the first step's model FLOPs, for MFU; free afterwards
            for micro in range(accum):
                batch = next(batches)
                last = micro == accum - 1
                with (nullcontext() if last or not isinstance(self.model, DDP) else self.model.no_sync()):
                    with autocast(self.precision, self.device.type):
                        losses, metrics = self.model(batch)
                    loss = sum(losses.values()) / accum
                    self.scaler.scale(loss).backward()  # even non-finite: every rank runs the same collectives
                for k, v in {"loss": loss * accum, **{f"loss/{k}": v for k, v in losses.items()}, **metrics}.items():
                    values[k] = values.get(k, 0.0) + torch.as_tensor(v, device=self.device).detach().float() / accum
        finite = torch.isfinite(values["loss"])
        if not self.scaler.is_enabled():  # fp16's scaler finds inf gradients itself and skips the update
            finite = finite & torch.isfinite(self._grad_norm())
        bad = dist.all_reduce_sum((~finite).float())  # every rank skips the same steps
        applied = None  # host path: known good once past the check below
        if self.device_skip is not None:  # the fused optimizer skips on the device: nothing waits for it here
            applied = self.device_skip.record(bad, self.step + 1, self.optimizer)
        elif bad.item() > 0:
            self.optimizer.zero_grad(set_to_none=True)
            shown = {k: round(float(v), 4) for k, v in values.items() if k.startswith("loss")}
            self.nonfinite.skipped(self.step + 1, f"non-finite loss or gradient {shown}", self.method,
                                   self.last_checkpoint())
            log.warning("non-finite loss or gradient at step %d %s: step skipped (%d so far)", self.step + 1,
                        shown, self.nonfinite.total)
            return False
        else:
            self.nonfinite.ok()
        if not scaled_step(self.scaler, self.optimizer, self.method.parameters(), self.cfg.optim.grad_clip):
            self.meter.amp_overflows += 1  # fp16 overflow: the scaler skipped this update and halved its scale
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_step(applied)
        self.meter.add(values, applied)
        return True if applied is None else None

    def _log_due(self) -> bool:
        return self.step % self.cfg.train.log_every == 0 or self.step == self.cfg.train.steps

    def _eval_and_checkpoint_due(self) -> tuple[bool, bool]:
        """Periodic evaluation / checkpoint at this step (full mode, before the last step: the end has its own)."""
        tr, every = self.cfg.train, self.cfg.eval.every
        if tr.mode != "full" or self.step >= tr.steps:
            return False, False
        return bool(every and self.step % every == 0), bool(tr.ckpt_every and self.step % tr.ckpt_every == 0)

    def _host_acts(self) -> bool:
        """This step logs, evaluates, checkpoints or ends the run (the steps where the host reads the device)."""
        return self._log_due() or self.preemption.requested or any(self._eval_and_checkpoint_due())

    def _settle(self) -> bool:
        """The device-decided skips since the last read: counted, logged and limited as on the host path."""
        applied, new = self.device_skip.settle(self.method, self.last_checkpoint)
        if new:
            log.warning("non-finite loss or gradient: %d step(s) skipped up to step %d (%d so far)", new, self.step,
                        self.nonfinite.total)
        return applied

    def _grad_norm(self) -> torch.Tensor:
        grads = [p.grad for p in self.method.parameters() if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)

    def _log(self, lr: float) -> None:
        """One all-reduce of every value averaged over the steps since the last log, the ranks and the
        micro-batches; with the non-finite flag, the only host syncs of the loop outside evaluation and saving."""
        values = self.meter.reduce(self.device)
        tr = self.cfg.train
        timing = self.clock.lap(self.step, self.device, tr.batch_size * tr.grad_accum * self.info.world_size)
        record = {**values, **part_lrs(self.optimizer, lr), **timing, **self.flops.rates(timing["step_time_s"]),
                  "skipped_samples": self.skips.total,
                  "nonfinite_steps": self.nonfinite.total}
        if self.scaler.is_enabled():
            record.update(amp_scale=float(self.scaler.get_scale()), amp_overflow_steps=self.meter.amp_overflows)
        self.writer.write(self.step, record)
        if self.info.is_main:
            log_step(self.step, tr.steps, record, self.skips.by_reason() if self.skips.total else "")

    def _maybe_eval_and_checkpoint(self) -> None:
        evaluate, checkpoint = self._eval_and_checkpoint_due()
        if not (evaluate or checkpoint):
            return
        t0 = time.perf_counter()
        if evaluate:
            self.evaluate(checkpoint_follows=checkpoint)
        if checkpoint:
            self.save()
        self.clock.pause(time.perf_counter() - t0)  # not training time: kept out of images/s

    def _should_stop(self) -> bool:
        """A preemption signal on any rank: save and stop, every rank at the same step."""
        if not self.preemption.agreed(self.info.world_size):
            return False
        self.save()
        log.warning("stopped by signal %d at step %d; resume with --resume latest", self.preemption.signum, self.step)
        return True

    def _finish(self) -> dict:
        tr = self.cfg.train
        summary = {"step": self.step, "skipped_samples": self.skips.total, "skips": self.skips.by_reason(False),
                   "nonfinite_steps": self.nonfinite.total, **self.clock.summary()}
        results: dict = {}
        if tr.mode == "performance" and "fps" in summary:
            log.info("performance: FPS %.1f images/s (global batch %d / mean step time of the last %d steps), "
                     "data wait %.1f%% of the step", summary["fps"], tr.batch_size * tr.grad_accum *
                     self.info.world_size, summary["fps_steps"], 100 * summary["data_wait"])
        elif not self.preemption.requested:
            results = self.evaluate(checkpoint_follows=True)
            saved = self.save()  # a path on rank 0 only
            if saved is not None:
                summary["checkpoint"] = str(saved)
        summary["eval"] = results
        if self.best_step >= 0 and (self.out / "best.pt").is_file():  # a dict: kept out of metrics.jsonl
            summary["best"] = {"value": self.best, "step": self.best_step, "path": str(self.out / "best.pt"),
                               "metric": self.cfg.eval.best_metric or default_best_metric(results)}
        if not self.preemption.requested:  # a preempted run's summary would sit mid-file once it resumes
            self.writer.write(self.step, {k: v for k, v in summary.items() if isinstance(v, (int, float))},
                              "summary")
        return summary

    def close(self, failure: BaseException | None = None) -> None:
        """Stop the loader workers (asked first, then killed: they ignore SIGTERM), restore the signal
        handlers, close the metrics files, the process group and train.log (``failure``'s traceback last)."""
        if self._iterator is not None:  # torch's orderly shutdown, or after a stall the workers killed at once
            self._iterator.close()
        stop_loader_workers()
        self.preemption.restore()
        self.writer.close()
        self._lock.release()
        dist.cleanup()
        close_run_logs(failure)


def train(cfg: Config, resume: str | None = None, **options) -> dict:
    """Build a :class:`Trainer` and run it; the loader workers, the process group and the run's train.log (which
    gets the failure's traceback) never outlive it."""
    trainer, failure = None, None
    try:
        trainer = Trainer(cfg, resume, **options)
        return trainer.train()
    except BaseException as e:
        failure = e
        raise
    finally:
        if trainer is not None:
            trainer.close(failure)
        else:  # a failed start (bad resume path, data error) must not leave the process group or a log open
            dist.cleanup()
            close_run_logs(failure)
