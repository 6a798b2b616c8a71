"""One rank of the distributed-equality check (tests/test_distributed.py), and the pieces both sides share.

Run as ``python tests/dist_worker.py OUT_DIR`` with a launcher's environment (RANK/WORLD_SIZE/MASTER_* as
torchrun sets them, or SLURM_PROCID/SLURM_NTASKS/... as srun does). Each rank builds every case's method with
the same seed, takes its rows of a hand-built global batch, runs one DDP forward/backward exactly as the trainer
wraps it, and saves its loss and every parameter gradient to OUT_DIR/rank{r}.pt. The test computes the
single-process reference on the whole batch and compares.

Why these choices make the comparison exact (to float rounding):
- Equal per-rank batches and per-rank losses that are means over local rows: mean over ranks of the per-rank
  loss = the single-process loss, and DDP's gradient average + the gather's summed backward = its gradient.
- MLM: every caption has exactly MASKS_PER_ROW masked tokens, so each rank's mean over its masked tokens
  averages to the global mean (with unequal counts the per-rank mean, as in the reference, weights differ).
- NN queue: each rank's bank starts as the bank the single process starts with (rank r seeds its bank with
  seed + r, and DDP's start-up buffer sync then copies rank 0's; the explicit copy keeps the test independent
  of that), and only the first step is compared: the neighbours come from the bank as it was before the step,
  so they are the same rows; afterwards each rank enqueues only its own captions (per-rank queues).
- SimSiam / SimCLR-head BatchNorm: batch statistics are per rank by design (plain BN, as the reference; SyncBN only on
  CUDA), so the SimSiam case runs its heads' BN in eval mode (per-sample affine), which still checks the
  branch's loss and gradients end to end; a second DeCLIP case turns SimSiam off with everything in train mode.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from declip.config import Config
from declip.vocab import EOT_ID, MASK_ID, SOT_ID
from declip.losses.nn_queue import NearestNeighborQueue
from declip.methods import build_method, method_class

from helpers import tiny_config  # tests/ is on sys.path: this file runs as a script from there

PER_RANK = 4  # rows per rank
MASKS_PER_ROW = 2
CASES: dict[str, list[str]] = {
    "clip": ["method.name=clip"],
    "clip_local": ["method.name=clip", "method.local_loss=true"],
    "declip_no_simsiam": ["method.name=declip", "method.simsiam_weight=0"],
    "declip_all_bn_eval": ["method.name=declip"],
    # the sigmoid loss: local images vs the gathered captions (and DeCLIP's NN term one way)
    "clip_sigmoid": ["method.name=clip", "method.contrastive_loss=sigmoid"],
    "declip_sigmoid_no_simsiam": ["method.name=declip", "method.contrastive_loss=sigmoid",
                                  "method.simsiam_weight=0"],
    # SLIP's SimCLR head BatchNorm in eval mode, as SimSiam's above (per-rank batch statistics by design)
    "slip_head_bn_eval": ["method.name=slip", "method.simclr_hidden_dim=32", "method.simclr_out_dim=16"],
    # FILIP / DeFILIP: top-k below the token counts (4 image tokens, captions up to 16) so selection happens, and
    # chunks of 3 of the 8 gathered columns, so the chunks straddle the ranks' halves
    "filip": ["method.name=filip", "method.filip_topk=3", "method.filip_chunk=3"],
    "defilip": ["method.name=defilip", "method.simsiam_weight=0", "method.filip_topk=3", "method.filip_chunk=3"],
    # locked towers (model.lock_*): frozen parameters are in no DDP bucket, the heads on a locked tower train
    "declip_lock_image": ["method.name=declip", "model.lock_image=true"],
    "slip_lock_text": ["method.name=slip", "method.simclr_hidden_dim=32", "method.simclr_out_dim=16",
                       "model.lock_text=true", "model.lock_text_unlocked_layers=1"],
}
BN_EVAL = {"declip_all_bn_eval": ("projector", "predictor"), "slip_head_bn_eval": ("simclr_head",),
           "declip_lock_image": ("projector", "predictor"), "slip_lock_text": ("simclr_head",)}
# a second step: DDP fails it ("Expected to have finished reduction...") if a bucketed parameter got no gradient
SECOND_STEP = ("declip_lock_image", "slip_lock_text")


def case_config(name: str) -> Config:
    """The tests' tiny config, smaller still (``small=True``): this runs 4 cases x 3 processes."""
    return tiny_config(*CASES[name], small=True)


def make_batch(cfg: Config, n: int, seed: int = 1) -> dict:
    """A global batch built by hand: random images, captions of random length (SOT ... EOT), an augmented
    caption, and MLM labels with exactly MASKS_PER_ROW masked tokens per caption."""
    g = torch.Generator().manual_seed(seed)
    views = method_class(cfg.method.name).data_spec(cfg).n_views
    size, ctx = cfg.model.vision.image_size, cfg.model.text.context_length

    def captions():
        ids = torch.zeros(n, ctx, dtype=torch.long)
        for i in range(n):
            length = int(torch.randint(MASKS_PER_ROW + 1, ctx - 2, (1,), generator=g))
            ids[i, 0] = SOT_ID
            ids[i, 1:length + 1] = torch.randint(1, SOT_ID, (length,), generator=g)
            ids[i, length + 1] = EOT_ID
        return ids

    text, text_aug = captions(), captions()
    labels = torch.full_like(text, -100)
    for i in range(n):
        words = int((text[i] != 0).sum()) - 2
        pos = 1 + torch.randperm(words, generator=g)[:MASKS_PER_ROW]
        labels[i, pos] = text[i, pos]
        text[i, pos] = MASK_ID
    images = torch.randn(n, views, 3, size, size, generator=g)
    return {"images": images, "text": text, "text_aug": text_aug, "mlm_labels": labels}


def rows(batch: dict, start: int, stop: int) -> dict:
    return {k: v[start:stop] for k, v in batch.items()}


def build_case(name: str, world_size: int = 1):
    """The method exactly as the trainer prepares it (seeded init, prepare_method, DDP for world > 1)."""
    from declip.train.accel import prepare_method, wrap_ddp

    cfg = case_config(name)
    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg)
    if hasattr(method, "queue"):  # every rank starts from the single process's bank (see the docstring)
        ref = NearestNeighborQueue(cfg.method.queue_size, cfg.model.embed_dim, seed=cfg.train.seed)
        method.queue.bank.copy_(ref.bank)
    prepare_method(method, cfg, "cpu", world_size)
    model = wrap_ddp(method, torch.device("cpu"), world_size)
    method.train()
    for head in BN_EVAL.get(name, ()):
        getattr(method, head).eval()
    return cfg, method, model


def run_step(method, model, batch: dict) -> dict:
    losses, _ = model(batch)
    loss = sum(losses.values())
    loss.backward()
    return {"loss": float(loss.detach()), "parts": {k: float(v.detach()) for k, v in losses.items()},
            "grads": {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None},
            "trainable": sorted(n for n, p in method.named_parameters() if p.requires_grad)}


def main(out_dir: str) -> None:
    from declip import distributed as dist

    torch.set_num_threads(1)
    info = dist.init_distributed(torch.device("cpu"), timeout_s=120)
    try:
        result = {"master_addr": os.environ.get("MASTER_ADDR"), "world_size": dist.get_world_size(),
                  "rank": dist.get_rank(),
                  # a preemption signal seen by one rank stops all (the trainer asks at every step, on the host)
                  "any_rank": [dist.any_rank(info.rank == 1), dist.any_rank(False), dist.any_rank(True)]}
        for name in CASES:
            cfg, method, model = build_case(name, info.world_size)
            full = make_batch(cfg, PER_RANK * info.world_size)
            mine = rows(full, info.rank * PER_RANK, (info.rank + 1) * PER_RANK)
            result[name] = run_step(method, model, mine)
            if name in SECOND_STEP:
                method.zero_grad(set_to_none=True)
                result[name]["second_loss"] = run_step(method, model, mine)["loss"]
        torch.save(result, Path(out_dir) / f"rank{info.rank}.pt")
    finally:
        dist.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
