"""The method seam: the trainer sees only this interface.

A method owns its towers (``self.clip``, an open_clip model), its heads and any state it keeps across steps
(registered buffers, so state_dict() carries it). ``forward(batch)`` returns (losses, metrics): losses are
already weighted tensors that the trainer sums; metrics are detached 0-d tensors that it averages and logs at
log steps (a float per step would make the host wait for the device at every step).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import Config
from ..data.loader import DataSpec
from ..losses import build_pair_loss
from ..models.towers import build_clip, clamp_logit_scale


class Method(nn.Module):
    def __init__(self, cfg: Config, clip: nn.Module | None = None):
        """``clip``: existing open_clip towers to train (``declip.build_method(cfg, model)``, whose config then
        describes them); None builds them from ``cfg.model``."""
        super().__init__()
        self.cfg = cfg
        self.clip = build_clip(cfg.model) if clip is None else clip
        # every image-text term's loss (method.contrastive_loss); a sigmoid loss brings its own scale and bias,
        # so the towers' logit scale takes no part in training (frozen: no optimizer state, no DDP bucket)
        self.contrastive = build_pair_loss(cfg.method.contrastive_loss)
        if cfg.method.contrastive_loss != "softmax":
            self.clip.logit_scale.requires_grad_(False)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    @staticmethod
    def data_spec(cfg: Config) -> DataSpec:
        raise NotImplementedError

    def forward(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        raise NotImplementedError

    def eval_heads(self) -> nn.Module | None:
        """The heads evaluation reads beside the towers: FILIP's dense heads (``eval.similarity=token``) for the
        methods that train them (``self.dense``, a DenseTerm), else None. The trainer passes them on unopened."""
        dense = getattr(self, "dense", None)
        return dense.heads if dense is not None else None

    def softmax_scales(self) -> list[torch.Tensor]:
        """Every softmax logit scale the reference clamps into [3, 6]: the towers' and, for the methods that
        train FILIP's dense heads, the dense one (Sense-GVT/DeCLIP filip_solver.py, defilip_solver.py clamp both
        alike). A sigmoid loss's own scale is not among them (``self.contrastive.clamp_``)."""
        heads = self.eval_heads()
        return [self.clip.logit_scale] + ([heads.logit_scale_dense] if heads is not None else [])

    @torch.no_grad()
    def after_step(self, applied: torch.Tensor | None = None) -> None:
        """Called after every optimizer step: the reference clamps each log(logit scale) into [3, 6] (the floor is
        ``model.logit_scale_min``). ``applied`` (0 or 1, on the device) says whether the step updated the
        weights, when the trainer decides a non-finite skip on the device; a skipped step leaves the weights as
        they were, so it is not counted. The sigmoid loss's own scale is clamped into open_clip's [0, log 100]
        instead (the reference's floor of 3 would undo SigLIP's init, log 10 = 2.3)."""
        for scale in self.softmax_scales():
            clamp_logit_scale(scale, self.cfg.model.logit_scale_min)
        self.contrastive.clamp_()
        self.steps_done += 1 if applied is None else applied.to(self.steps_done.dtype)
